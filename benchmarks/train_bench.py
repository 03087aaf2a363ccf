"""RL train-step throughput (loss + grad + AdamW, one update per step), the ringjax side of docs/benchmarks.md.

    python3 benchmarks/train_bench.py [--presets bench-tiny,bench-100m] [--seqs 16] [--seq-len 256]
        [--rows 4] [--dtype float32|bfloat16] [--runs 3] [--peak-tflops X] [--tunix-python V/bin/python] [--out FILE]

Each step: `--seqs` random sequences of `--seq-len` tokens (a 32-token prompt, the rest response: all response
tokens are trained on, phi = seqs * (seq_len - 32)), packed into micro-batches of `--rows` rows, then the jitted
`make_train_step` (logp_old from the gradient pass, IcePop-corrected C3PO loss, float32 gradient accumulation, AdamW).
`tokens_per_s` counts every token of every sequence (what the peers report). `mfu` = 6 * active parameters *
tokens / step time / peak FLOP/s (forward + backward; no separate logp_old forward); printed when
`--peak-tflops` is given or the device is a known GPU. `peak_rss_gb`: this process's peak resident memory so far
(presets run in the order given, smallest first by default, so each figure is that preset's peak).

With `--tunix-python` (the python of a virtualenv with google-tunix 0.1.7 and jax[cpu]) Tunix's GRPO update on its
Qwen3-MoE at the same size and batch (`benchmarks/peers/tunix_parts.py --part update`: loss + grad + AdamW, no
old-log-prob pass) is measured in the same run, in its own process, with its peak memory; `over_tunix` is ringjax's
tokens/s over Tunix's, against the bar of docs/benchmarks.md (3x). A peer that cannot run is reported as
{"missing": why} and gets no ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import numpy as np

from ringjax.losses import LossConfig
from ringjax.model import count_params, create_model, preset
from ringjax.trainer import Response, assemble_step, pack_micro_batches
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.optim import OptimConfig, make_optimizer
from ringjax.trainer.state import init_train_state
from ringjax.trainer.step import make_train_step, rl_loss_fn
from _peer import ratio, run_peer
from _summary import emit_summary

PEAK_TFLOPS = {"NVIDIA H200": 989.0, "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA A100-SXM4-80GB": 312.0}  # dense bf16
PROMPT = 32
TARGET = 3.0  # ringjax tokens/s over Tunix's


def make_batch(vocab: int, seqs: int, seq_len: int, rows: int, loss: LossConfig, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = seq_len - PROMPT
    responses = [Response(prompt_id=i, prompt=rng.integers(1, vocab, PROMPT), tokens=rng.integers(1, vocab, n),
                          logp_infer=-np.log(vocab) + 0.05 * rng.normal(size=n), reward=float(i % 2),
                          advantage=float(rng.normal())) for i in range(seqs)]
    step, _ = assemble_step(responses, seqs * n)
    return stack_micro_batches(pack_micro_batches(step, rows, seq_len, packed=False), loss.aggregation, step.phi)


def time_steps(cfg, args):
    """(step, state, inputs, first call s, timed call s) of `args.runs` train steps after a compiling one, on
    `args.seqs` x `args.seq_len` tokens in micro-batches of `args.rows` rows."""
    loss = LossConfig()  # c3po over phi = seqs * (seq_len - PROMPT), every response token of the step
    tx = make_optimizer(OptimConfig(lr=1e-5))
    graphdef, state = init_train_state(create_model(cfg, seed=0), tx, 0)
    step = make_train_step(graphdef, tx, rl_loss_fn(loss))
    batch = step.inputs(make_batch(cfg.vocab_size, args.seqs, args.seq_len, args.rows, loss, 0))
    t0 = time.perf_counter()
    state, sums = step(state, batch)
    jax.block_until_ready(sums)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        state, sums = step(state, batch)
        jax.block_until_ready(sums)
        times.append(time.perf_counter() - t0)
    return step, state, batch, first, times


def bench(name: str, args) -> dict:
    cfg = preset(name, **{"compute.dtype": args.dtype, "compute.param_dtype": "float32"})
    _, state, batch, first, times = time_steps(cfg, args)
    t = statistics.median(times)
    tokens = args.seqs * args.seq_len
    active = count_params(cfg).active
    row = {"preset": name, "params_active": active, "seqs": args.seqs, "seq_len": args.seq_len, "rows": args.rows,
           "micro_batches": batch.micro_batches, "step_s": round(t, 4), "tokens_per_s": round(tokens / t, 1),
           "runs_s": [round(x, 4) for x in times], "compile_s": round(first - t, 2),
           "skipped": int(state.skipped),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    peak = args.peak_tflops or PEAK_TFLOPS.get(jax.devices()[0].device_kind)
    if peak:
        row["mfu"] = round(6 * active * tokens / t / (peak * 1e12), 4)
    return row


def bench_tunix(name: str, args) -> dict:
    lines = run_peer(args.tunix_python, "tunix_parts.py",
                     ["--part", "update", "--size", name, "--seqs", str(args.seqs), "--seq-len", str(args.seq_len),
                      "--runs", str(args.runs)], args.peer_timeout)
    return lines if isinstance(lines, dict) else lines[-1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="bench-tiny,bench-100m")
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--tunix-python", default=None, help="the python of a virtualenv with google-tunix 0.1.7")
    ap.add_argument("--peer-timeout", type=float, default=3600.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "dtype": args.dtype}
    print(json.dumps({"env": env}), flush=True)
    results = []
    for name in args.presets.split(","):
        row = bench(name, args)
        if args.tunix_python:
            if args.dtype != "float32":
                row["tunix"] = {"missing": "the Tunix side is measured in float32 only"}
            else:
                row["tunix"] = bench_tunix(name, args)
            row["over_tunix"] = ratio(row["tokens_per_s"], row["tunix"], "tokens_per_s")
            if row["over_tunix"] is not None:
                row["target_met"] = row["over_tunix"] >= TARGET
        results.append(row)
        print(json.dumps(row), flush=True)
    summary = {"env": env, "results": results, "target_over_tunix": TARGET,
               "tokens_per_s": {r["preset"]: r["tokens_per_s"] for r in results}}
    return emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
