"""Tunix's whole GRPO step (its `GRPOLearner`), the peer side of `benchmarks/rl_step_bench.py`.

Runs in Tunix's own virtualenv (`python3 -m venv V && V/bin/pip install google-tunix==0.1.7 "jax[cpu]"`), started by
rl_step_bench.py with that interpreter; imports nothing of ringjax. The model is Tunix's own Qwen3-MoE code at the
sizes of ringjax's `bench-tiny` / `bench-100m` presets (all layers MoE, no shared expert, untied embeddings).

Each step: `--prompts` prompts of `--prompt-len` random ids (a whitespace id tokenizer, no BOS) x `--group`
generations of exactly `--new-tokens` tokens (the end-of-sequence id lies outside the vocabulary), temperature 1.0,
the reward of rl_step_bench.py (share of even ids in the completion), reference log-probs (beta `--beta`) and one
AdamW update: `GRPOLearner.train` with the vanilla rollout engine, everything on the one CPU device. A step's time
is the learner's generate-and-advantage phase plus its `update_actor`, taken by wrapping those two methods;
`--warmup` steps (compilation) are left out of the median. Prints one JSON line.
"""

import argparse
import json
import resource
import statistics
import time

SIZES = {
    "bench-tiny": dict(num_layers=4, vocab_size=4096, embed_dim=256, hidden_dim=128, num_heads=8, head_dim=32,
                       num_kv_heads=2, num_experts=16, num_experts_per_tok=2),
    "bench-100m": dict(num_layers=8, vocab_size=16384, embed_dim=512, hidden_dim=384, num_heads=8, head_dim=64,
                       num_kv_heads=2, num_experts=16, num_experts_per_tok=2),
}


class IdTokenizer:
    """'5 17 9' <-> [5, 17, 9]; pad and BOS 0 (Tunix then adds no BOS)."""

    def __init__(self, eos: int):
        self._eos = eos

    def encode(self, text, **_):
        if not isinstance(text, str):  # the learner may hand over a one-element array
            import numpy as np
            text = str(np.asarray(text).reshape(-1)[0])
        return [int(t) for t in text.split()]

    def decode(self, ids, **_):
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self):
        return 0

    def eos_id(self):
        return self._eos

    def pad_id(self):
        return 0


def even_share(completion: str) -> float:
    ids = completion.split()
    return sum(int(i) % 2 == 0 for i in ids) / len(ids) if ids else 0.0


def build(size: str, seed: int):
    import jax.numpy as jnp
    from flax import nnx
    from tunix.models.qwen3 import model as qwen3

    cfg = qwen3.ModelConfig(**SIZES[size], rope_theta=10000, norm_eps=1e-6, use_tied_embedding=False,
                            dtype=jnp.float32, param_dtype=jnp.float32)
    return qwen3.Qwen3(cfg, rngs=nnx.Rngs(params=seed)), cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="bench-tiny", choices=sorted(SIZES))
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=192)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import grain.python as grain
    import numpy as np
    import optax
    from jax.interpreters import pxla
    from tunix.rl import rl_cluster as rl
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    steps = args.warmup + args.runs
    actor, cfg = build(args.size, args.seed)
    reference, _ = build(args.size, args.seed)
    eos = cfg.vocab_size + 100
    mesh = pxla.thread_resources.env.physical_mesh
    cluster = rl.RLCluster(
        actor=actor, reference=reference, tokenizer=IdTokenizer(eos),
        cluster_config=rl.ClusterConfig(
            role_to_mesh={rl.Role.ACTOR: mesh, rl.Role.REFERENCE: mesh, rl.Role.ROLLOUT: mesh},
            rollout_engine="vanilla", offload_to_cpu=False,
            training_config=rl.RLTrainingConfig(actor_optimizer=optax.adamw(1e-6), eval_every_n_steps=10**6,
                                                max_steps=steps),
            rollout_config=base_rollout.RolloutConfig(
                max_tokens_to_generate=args.new_tokens, max_prompt_length=args.prompt_len,
                kv_cache_size=args.prompt_len + args.new_tokens, temperature=1.0, top_p=1.0, eos_tokens=[eos])))
    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster, reward_fns=lambda prompts, completions, **_: [even_share(c) for c in completions],
        algo_config=grpo_learner.GRPOConfig(num_generations=args.group, num_iterations=1, beta=args.beta,
                                            epsilon=0.2))
    phases = {"rollout_s": [], "update_s": []}

    def timed(owner, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = inner(*a, **k)
            phases[key].append(time.perf_counter() - t0)
            return out

        setattr(owner, name, wrapper)

    timed(learner, "_generate_and_compute_advantage", "rollout_s")
    timed(cluster, "update_actor", "update_s")
    rng = np.random.default_rng(args.seed + 1)
    prompts = [" ".join(map(str, rng.integers(4, cfg.vocab_size, args.prompt_len)))
               for _ in range(args.prompts * steps)]
    data = grain.MapDataset.source(prompts).batch(args.prompts).map(lambda x: {"prompts": x})
    t0 = time.perf_counter()
    learner.train(data)
    total = time.perf_counter() - t0
    rollout, update = phases["rollout_s"], phases["update_s"]
    step_s = [r + u for r, u in zip(rollout, update)]
    measured = step_s[args.warmup:]
    print(json.dumps({
        "peer": "tunix", "size": args.size, "steps": len(step_s), "total_s": round(total, 2),
        "step_s": round(statistics.median(measured), 3) if measured else None,
        "rollout_s": round(statistics.median(rollout[args.warmup:]), 3) if measured else None,
        "update_s": round(statistics.median(update[args.warmup:]), 3) if measured else None,
        "steps_s": [round(x, 3) for x in step_s],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}), flush=True)


if __name__ == "__main__":
    main()
