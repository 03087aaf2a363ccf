"""Forward and decode throughput of random-init Ling models, the ringjax side of docs/benchmarks.md.

    PYTHONPATH=. python3 benchmarks/model_bench.py [--presets bench-tiny,bench-100m] [--batches 8,32]
        [--dtype float32|bfloat16] [--runs 3] [--out FILE] [--set compute.moe=gather ...]

Prints one JSON line per measurement and a final {"summary": ...} line (also written to --out).
- decode: `ringjax.generate.generate` on prompts of --prompt-len random ids, --new-tokens new tokens, temperature
  1.0, top_p 1.0, no eos (every row generates every token). `gen_tok_per_s` = B * new_tokens / (prefill + decode
  wall time), the peers' `gen_tok_per_s`; `decode_only_tok_per_s` leaves out the prefill (timed on its own).
- forward: one jitted `Ling.token_logprobs` over [B, prompt_len + new_tokens] tokens (hidden states, then the
  chunked log-softmax over the vocabulary), the scoring pass of RL.
Each figure is the median of --runs timed runs after one warm-up; `compile_s` = first call - median run.
Device-agnostic: runs on whatever `jax.devices()[0]` is (CPU here, GPU when lent).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringjax.generate import generate, prefill
from ringjax.model import create_model, init_cache, preset
from _summary import emit_summary


def _timed(fn, runs: int) -> tuple[float, list[float]]:
    """First-call seconds (compile + run) and `runs` timed calls after one more warm-up call."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(0))
    first = time.perf_counter() - t0
    jax.block_until_ready(fn(1))
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(2 + i))
        times.append(time.perf_counter() - t0)
    return first, times


def _prompts(cfg, batch: int, length: int, seed: int) -> jax.Array:
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length))
    return jnp.asarray(ids, jnp.int32)


def bench_decode(model, batch: int, prompt_len: int, new_tokens: int, runs: int) -> dict:
    cfg = model.config
    lens = jnp.full((batch,), prompt_len, jnp.int32)

    def run(i):
        return generate(model, _prompts(cfg, batch, prompt_len, i), lens, new_tokens, rng=jax.random.key(i),
                        temperature=1.0, top_p=1.0).tokens

    first, times = _timed(run, runs)
    graphdef, state = nnx.split(model)

    def run_prefill(i):
        cache = init_cache(cfg, batch, prompt_len + new_tokens)
        return prefill(graphdef, state, cache, _prompts(cfg, batch, prompt_len, i), lens)[0]

    _, prefill_times = _timed(run_prefill, runs)
    total, pre = statistics.median(times), statistics.median(prefill_times)
    return {"gen_tok_per_s": round(batch * new_tokens / total, 1),
            "decode_only_tok_per_s": round(batch * (new_tokens - 1) / max(total - pre, 1e-9), 1),
            "median_s": round(total, 4), "prefill_s": round(pre, 4), "runs_s": [round(t, 4) for t in times],
            "compile_s": round(first - total, 2)}


def bench_forward(model, batch: int, seq_len: int, runs: int) -> dict:
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens):
        return nnx.merge(graphdef, state).token_logprobs(tokens)[0]

    first, times = _timed(lambda i: forward(state, _prompts(model.config, batch, seq_len, i)), runs)
    t = statistics.median(times)
    return {"tok_per_s": round(batch * seq_len / t, 1), "median_s": round(t, 4),
            "runs_s": [round(x, 4) for x in times], "compile_s": round(first - t, 2)}


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = int(value) if value.isdigit() else value
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="bench-tiny,bench-100m")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parts", default="decode,forward")
    ap.add_argument("--set", nargs="*", default=[], help="LingConfig overrides, e.g. compute.moe=gather")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    dev = jax.devices()[0]
    env = {"jax": jax.__version__, "jaxlib": jax.lib.__version__, "backend": jax.default_backend(),
           "device_kind": dev.device_kind, "device_count": jax.device_count(), "dtype": args.dtype,
           "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "runs": args.runs, "overrides": args.set}
    print(json.dumps({"env": env}), flush=True)
    results = []
    for name in args.presets.split(","):
        cfg = preset(name, **{"compute.dtype": args.dtype, "compute.param_dtype": args.dtype},
                     **_overrides(args.set))
        model = create_model(cfg, seed=args.seed)
        params = int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
        for batch in map(int, args.batches.split(",")):
            row = {"preset": name, "params": params, "batch": batch}
            if "decode" in parts:
                row["decode"] = bench_decode(model, batch, args.prompt_len, args.new_tokens, args.runs)
            if "forward" in parts:
                row["forward"] = bench_forward(model, batch, args.prompt_len + args.new_tokens, args.runs)
            print(json.dumps(row), flush=True)
            results.append(row)
    summary = {"env": env, "results": results,
               "decode_gen_tok_per_s": {f"{r['preset']}/b{r['batch']}": r["decode"]["gen_tok_per_s"]
                                        for r in results if "decode" in r}}
    return emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
