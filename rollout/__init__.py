"""Rollout side of ringjax: generation engines, the C3PO++ scheduler, Ray workers, rewards and the code sandbox.

- `rollout.types`: the engine interface (`Request`, `Output`, `SamplingParams`, `Engine`);
- `rollout.jax_engine.JaxEngine`: the embedded engine (slot-based continuous batching on the trainer's mesh);
- `rollout.sglang.engine.SGLangEngine`: one SGLang server per engine, bucketed weight sync from the trainer;
- `rollout.ray_pool.RayEnginePool`: engines in Ray actors behind the same interface, results through a
  `ray.util.queue.Queue`, dead workers restarted and their requests reissued;
- `rollout.c3po_pp.C3POPlusPlus`: token-budgeted iterations with carry-over (and the synchronous baseline);
- `rollout.rewards`: Math-Verify math rewards, sandboxed code rewards, `RewardPool`; `rollout.sandbox`: bubblewrap.
- `rollout.routes`: routing records (the experts an engine used per token and MoE layer) for router replay and
  routing diagnostics; `rollout.numerics`: controlled train-inference mismatch of the embedded engine (bf16,
  simulated fp8, MoE kernel, weight noise); `rollout.zero_mismatch`: the engine's bit-exact control mode.
"""
