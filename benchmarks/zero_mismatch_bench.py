"""What the zero-mismatch control costs: decode throughput of the embedded JAX engine, normal vs zero-mismatch.

    PYTHONPATH=. python3 benchmarks/zero_mismatch_bench.py [--preset tiny-v2] [--batch 8] [--rows 4]
        [--prompt-len 16] [--new-tokens 16,48,112] [--chunk 8] [--repeats 3] [--smoke] [--out FILE]

Per --new-tokens value N (the engine's context, i.e. the zero-mismatch window, is W = --prompt-len + N): the same
`batch` requests (random prompt ids, temperature 1.0, top_p 1.0, no stop ids, max_tokens N, so every row generates
every token; checked) through `JaxEngine(slots=batch, max_context=W, decode_chunk=chunk)`, once normal (KV-cache
decode) and once with `zero_mismatch=True, zero_mismatch_rows=rows` (the full forward over [rows, W] per step),
each driven by `run_to_completion` from submit to the last output (prefill included). `gen_tok_per_s` = batch * N /
wall time, the median of --repeats timed runs on fresh prompts after one warm-up run (`first_s`, compile included);
`slowdown` = normal / zero-mismatch tokens per second.

Each mode's outputs of the warm-up run are also scored the way `train_rl` scores them in zero-mismatch mode
(`pack_micro_batches(..., rows, W, packed=False)`, the jitted lax.map of `sequence_logprobs`): `bit_equal` says
whether every engine log-prob equals the trainer's bit for bit, `max_abs_dlogp` the largest difference. Prints one
JSON line per measurement and a final {"summary": ...} line (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringjax.model import create_model, preset
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.c3po import Response, StepBatch, pack_micro_batches
from ringjax.trainer.step import make_score_fn
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.types import Request, SamplingParams
from _summary import emit_summary

TEMPERATURE = 1.0


def _requests(vocab: int, batch: int, prompt_len: int, new_tokens: int, seed: int) -> list[Request]:
    ids = np.random.default_rng(seed).integers(0, vocab, (batch, prompt_len))
    sampling = SamplingParams(temperature=TEMPERATURE, top_p=1.0, max_tokens=new_tokens)
    return [Request(f"r{seed}-{i}", ids[i], sampling) for i in range(batch)]


def trainer_check(model, requests: list[Request], done: dict, rows: int, width: int) -> dict:
    """Engine log-probs against the trainer's recomputation of the same tokens (zero-mismatch packing)."""
    responses = [Response(i, r.prompt, done[r.id].tokens, done[r.id].logprobs, 0.0, 0.0)
                 for i, r in enumerate(requests)]
    step = StepBatch(tuple(responses), sum(len(r) for r in responses), 0)
    host = stack_micro_batches(pack_micro_batches(step, rows, width, packed=False), "token_mean", step.phi)
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    old = np.asarray(make_score_fn(graphdef, TEMPERATURE)(params, frozen, batch))
    mask = host["loss_mask"]
    infer = host["logp_infer"][mask]
    return {"bit_equal": bool(np.array_equal(infer, old[mask])),
            "max_abs_dlogp": float(np.max(np.abs(infer - old[mask]))), "tokens_checked": int(mask.sum())}


def bench_mode(model, zero_mismatch: bool, new_tokens: int, args) -> dict:
    width = args.prompt_len + new_tokens
    engine = JaxEngine(model, slots=args.batch, max_context=width, decode_chunk=args.chunk, seed=args.seed,
                       zero_mismatch=zero_mismatch, zero_mismatch_rows=args.rows)
    vocab = model.config.vocab_size

    def run(seed: int) -> tuple[float, list[Request], dict]:
        requests = _requests(vocab, args.batch, args.prompt_len, new_tokens, seed)
        t0 = time.perf_counter()
        done = run_to_completion(engine, requests)
        elapsed = time.perf_counter() - t0
        bad = [(o.id, o.finish, len(o.tokens)) for o in done.values()
               if o.finish != "length" or len(o.tokens) != new_tokens]
        if bad:
            raise RuntimeError(f"rows that did not generate {new_tokens} tokens: {bad[:3]}")
        return elapsed, requests, done

    try:
        load_before = round(os.getloadavg()[0], 2)
        first, requests, done = run(0)
        times = [run(1 + i)[0] for i in range(args.repeats)]
    finally:
        engine.close()
    t = statistics.median(times)
    return {"mode": "zero_mismatch" if zero_mismatch else "normal", "new_tokens": new_tokens, "window": width,
            "gen_tok_per_s": round(args.batch * new_tokens / t, 1), "median_s": round(t, 4),
            "runs_s": [round(x, 4) for x in times], "first_s": round(first, 2),
            "load_avg": [load_before, round(os.getloadavg()[0], 2)],
            **trainer_check(model, requests, done, args.rows, width)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny-v2")
    ap.add_argument("--batch", type=int, default=8, help="engine slots = requests per run")
    ap.add_argument("--rows", type=int, default=4, help="the trainer's micro-batch rows (zero_mismatch_rows)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", default="16,48,112", help="comma-separated; the window is prompt-len + this")
    ap.add_argument("--chunk", type=int, default=8, help="decode_chunk")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="minimal sizes: checks the script, not the numbers")
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.rows, args.prompt_len, args.new_tokens, args.chunk, args.repeats = 2, 1, 4, "4", 2, 1
    new_tokens = [int(n) for n in args.new_tokens.split(",")]
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "cpu_count": os.cpu_count(), "preset": args.preset, "batch": args.batch, "rows": args.rows,
           "prompt_len": args.prompt_len, "chunk": args.chunk, "repeats": args.repeats, "smoke": args.smoke}
    print(json.dumps({"env": env}), flush=True)
    model = create_model(preset(args.preset), seed=args.seed)
    results, table = [], {}
    for n in new_tokens:
        pair = {}
        for zero_mismatch in (False, True):
            row = bench_mode(model, zero_mismatch, n, args)
            print(json.dumps(row), flush=True)
            results.append(row)
            pair[row["mode"]] = row
        table[f"W{args.prompt_len + n}"] = {
            "normal_tok_per_s": pair["normal"]["gen_tok_per_s"],
            "zero_mismatch_tok_per_s": pair["zero_mismatch"]["gen_tok_per_s"],
            "slowdown": round(pair["normal"]["gen_tok_per_s"] / pair["zero_mismatch"]["gen_tok_per_s"], 2),
            "bit_equal": {"normal": pair["normal"]["bit_equal"], "zero_mismatch": pair["zero_mismatch"]["bit_equal"]}}
    return emit_summary({"env": env, "results": results, "table": table}, args.out, {"env": env, "table": table})


if __name__ == "__main__":
    main()
