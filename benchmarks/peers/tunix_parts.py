"""Tunix's decode and update, the peer side of `benchmarks/engine_bench.py` and `benchmarks/train_bench.py`.

    V/bin/python benchmarks/peers/tunix_parts.py --part decode|update --size bench-tiny|bench-100m [options]

Runs in Tunix's own virtualenv (`python3 -m venv V && V/bin/pip install google-tunix==0.1.7 "jax[cpu]"`); imports
nothing of ringjax. The model is Tunix's Qwen3-MoE at the sizes of ringjax's bench presets (tunix_rl_step.py).
- decode: `tunix.generate.sampler.Sampler` on `batch` prompts of `--prompt-len` random ids, exactly `--new-tokens`
  new tokens each (the end id lies outside the vocabulary), temperature 1.0, top_p 1.0; one warm-up call per batch
  (compile), then `--runs` timed calls on fresh prompts. `gen_tok_per_s` = batch * new tokens / median time.
- update: GRPO's loss (`tunix.rl.algo_core.grpo_loss_fn`, what GRPOLearner trains with, beta 0.04 with reference
  log-probs given, one iteration) + gradient + AdamW (`nnx.Optimizer`), jitted like Tunix's trainer, on `--seqs`
  sequences of `--seq-len` tokens (a 32-token prompt, the rest completion); `tokens_per_s` counts every token.
`peak_rss_gb` is this process's peak resident memory so far. One JSON line per measurement.
"""

import argparse
import json
import resource
import statistics
import time

from tunix_rl_step import SIZES, IdTokenizer, build

PROMPT = 32  # train_bench.py's prompt length


def _rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def decode(model, cfg, args, rng) -> None:
    from tunix.generate import sampler as sampler_lib

    eos = cfg.vocab_size + 100
    cache = sampler_lib.CacheConfig(cache_size=args.prompt_len + args.new_tokens, num_layers=cfg.num_layers,
                                    num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
    sampler = sampler_lib.Sampler(transformer=model, tokenizer=IdTokenizer(eos), cache_config=cache)
    for batch in (int(b) for b in args.batches.split(",")):
        def call(seed: int, batch: int = batch) -> float:
            prompts = [" ".join(map(str, rng.integers(4, cfg.vocab_size, args.prompt_len))) for _ in range(batch)]
            t0 = time.perf_counter()
            out = sampler(prompts, max_generation_steps=args.new_tokens, max_prompt_length=args.prompt_len,
                          temperature=1.0, top_p=1.0, seed=seed, eos_tokens=[eos])
            elapsed = time.perf_counter() - t0
            n = sum(len(t) for t in out.tokens)
            if n != batch * args.new_tokens:
                raise RuntimeError(f"Tunix generated {n} tokens, expected {batch * args.new_tokens}")
            return elapsed

        first = call(0)
        times = [call(1 + i) for i in range(args.runs)]
        t = statistics.median(times)
        print(json.dumps({"part": "decode", "size": args.size, "batch": batch, "first_s": round(first, 2),
                          "runs_s": [round(x, 4) for x in times], "median_s": round(t, 4),
                          "gen_tok_per_s": round(batch * args.new_tokens / t, 1), "peak_rss_gb": _rss_gb()}),
              flush=True)


def update(model, cfg, args, rng) -> None:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tunix.rl import algo_core, common
    from tunix.rl.grpo import grpo_learner

    b, p, c = args.seqs, PROMPT, args.seq_len - PROMPT
    pad, eos = 0, cfg.vocab_size + 100
    algo = grpo_learner.GRPOConfig(num_generations=4, beta=0.04, epsilon=0.2)
    algo.temperature = 1.0  # GRPOLearner copies it from the rollout config
    opt = nnx.Optimizer(model, optax.adamw(1e-6), wrt=nnx.Param)

    @nnx.jit
    def ref_logps(m, prompt, comp):
        graphdef, state = nnx.split(m)
        return common.compute_per_token_logps(graphdef, state, prompt_tokens=prompt, completion_tokens=comp,
                                              pad_id=pad, eos_id=eos, stop_gradient=True)

    @nnx.jit
    def train_step(m, o, example):
        loss, grads = nnx.value_and_grad(lambda mm: algo_core.grpo_loss_fn(mm, example, algo, pad, eos)[0])(m)
        o.update(m, grads)
        return loss

    def example():
        prompt = jnp.asarray(rng.integers(4, cfg.vocab_size, (b, p)), jnp.int32)
        comp = jnp.asarray(rng.integers(4, cfg.vocab_size, (b, c)), jnp.int32)
        return grpo_learner.TrainExample(
            prompt_ids=prompt, prompt_mask=jnp.ones((b, p), jnp.int32), completion_ids=comp,
            completion_mask=jnp.ones((b, c), jnp.int32), advantages=jnp.asarray(rng.standard_normal(b), jnp.float32),
            ref_per_token_logps=jax.block_until_ready(ref_logps(model, prompt, comp)), old_per_token_logps=None)

    t0 = time.perf_counter()
    jax.block_until_ready(train_step(model, opt, example()))
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.runs):
        ex = example()
        t0 = time.perf_counter()
        jax.block_until_ready(train_step(model, opt, ex))
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    print(json.dumps({"part": "update", "size": args.size, "seqs": b, "seq_len": args.seq_len,
                      "first_s": round(first, 2), "runs_s": [round(x, 4) for x in times], "step_s": round(t, 4),
                      "tokens_per_s": round(b * args.seq_len / t, 1), "peak_rss_gb": _rss_gb()}), flush=True)


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", required=True, choices=["decode", "update"])
    ap.add_argument("--size", default="bench-tiny", choices=sorted(SIZES))
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model, cfg = build(args.size, args.seed)
    {"decode": decode, "update": update}[args.part](model, cfg, args, np.random.default_rng(args.seed + 1))


if __name__ == "__main__":
    main()
