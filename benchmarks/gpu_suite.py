"""Every accelerator measurement of ringjax in one command: about 8 minutes on one H200 at `--size full`.

    PYTHONPATH=. python3 benchmarks/gpu_suite.py [--size full|toy] [--layers 4] [--out FILE]

Needs only jax, flax, optax and numpy / pyyaml / jaxtyping (ringjax's model and trainer import nothing else), so it
runs on an accelerator image without the rollout stack's services. `--size toy` runs the same code on the test
preset in seconds (the test suite runs it on CPU). Four parts, each one JSON line, then {"summary": ...}:
- `train`: the RL train step (`make_train_step`: logp_old from the gradient pass, IcePop-corrected C3PO loss, float32
  gradient accumulation, AdamW) on a Ling-mini-2.0-shaped MoE (hidden 2048, 256 experts top-8 + 1 shared,
  vocabulary 157184) cut to `--layers` decoder layers, bfloat16 compute, float32 weights; `--seqs` x `--seq-len`
  tokens per step in micro-batches of `--rows` rows. Step time is the median of `--runs` after a compiling step;
  `mfu` = 6 x active matmul parameters x tokens / step time / the device's dense bf16 peak (forward +
  backward; active parameters without the embedding table, which is a lookup;
  attention score FLOPs are not counted, so this under-states the work), `peak_mib` the device's peak memory where
  it reports one.
- `profile`: one more step under `jax.profiler` (a Perfetto trace), device time aggregated by op name: the top
  `--top-ops` ops and their share.
- `decode`: the embedded engine (`rollout.jax_engine.JaxEngine`) on the same model, `--prompt-len` prompts and
  `--new-tokens` new tokens per row at each of `--batches`, generated tokens/s (median of 2 runs after a warm-up).
- `logprob_memory`: compiled temporary memory of the log-prob pass with its gradient (`token_logprobs`, what the
  train step differentiates) at the full vocabulary, chunked (`--lp-chunk`, the default `compute.logprob_chunk`;
  vocabulary blocks of the default `compute.logprob_vocab_chunk`) against one chunk holding the whole sequence and
  vocabulary (the [B, S, V] float32 logits a naive implementation builds).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ringjax.model import ComputeConfig, count_params, create_model, preset
from ringjax.model.logprobs import token_logprobs
from _summary import emit_summary
from train_bench import PEAK_TFLOPS, time_steps

# --size: the model and the work of each part. full: about 8 minutes on one H200; toy: seconds on 2 CPU cores.
SIZES = {
    "full": {"preset": "ling-mini-2.0", "layers": 4, "seqs": 32, "seq_len": 2048, "rows": 8, "runs": 3,
             "batches": "64,256", "prompt_len": 128, "new_tokens": 256, "lp_rows": 4, "lp_seq": 4096, "lp_chunk": 1024},
    "toy": {"preset": "tiny-v2", "layers": 2, "seqs": 4, "seq_len": 64, "rows": 2, "runs": 2,
            "batches": "4,8", "prompt_len": 8, "new_tokens": 8, "lp_rows": 2, "lp_seq": 512, "lp_chunk": 64},
}


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 3)


def model_config(args):
    return preset(args.preset, num_hidden_layers=args.layers, **{"compute.dtype": args.dtype,
                                                                  "compute.param_dtype": "float32",
                                                                  "compute.moe": args.moe})


def bench_train(cfg, args) -> tuple[dict, object, object]:
    """(row, step function, (state, batch)) of the timed train steps."""
    step, state, batch, first, times = time_steps(cfg, args)
    t = statistics.median(times)
    tokens = args.seqs * args.seq_len
    counts = count_params(cfg)
    flops = 6 * (counts.active - cfg.vocab_size * cfg.hidden_size) * tokens  # the embedding is a lookup
    peak = args.peak_tflops or PEAK_TFLOPS.get(jax.devices()[0].device_kind)
    row = {"part": "train", "layers": cfg.num_hidden_layers, "params_total": counts.total,
           "params_active": counts.active, "tokens_per_step": tokens, "micro_batches": batch.micro_batches,
           "step_s": round(t, 4), "runs_s": [round(x, 4) for x in times], "compile_s": round(first - t, 2),
           "tokens_per_s": round(tokens / t, 1), "tflops_per_s": round(flops / t / 1e12, 2),
           "mfu": None if not peak else round(flops / t / (peak * 1e12), 4), "peak_tflops": peak,
           "peak_mib": _mib(_peak_bytes()), "compiles": dict(step.compiles), "skipped": int(state.skipped)}
    return row, step, (state, batch)


def _trace_ops(trace_dir: str, top: int) -> list[dict]:
    """Device time per op name from the Perfetto trace (host-side Python and dispatch events left out)."""
    path = sorted(glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True))[-1]
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    device = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
              and str(e.get("args", {}).get("name", "")).startswith("/device:")}
    host = ("$", "PjitFunction", "Execute", "Thunk", "TfrtCpu", "ThreadPool", "ParseArguments", "DevicePut")
    time_by_op = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or not e.get("dur"):
            continue
        if (device and e["pid"] in device) or (not device and not e["name"].startswith(host)
                                               and "::" not in e["name"]):
            time_by_op[e["name"]] += e["dur"]
    total = sum(time_by_op.values()) or 1.0
    return [{"op": name, "ms": round(us / 1e3, 3), "share": round(us / total, 4)}
            for name, us in time_by_op.most_common(top)]


def profile_step(step, state, batch, top: int) -> tuple[dict, object]:
    with tempfile.TemporaryDirectory(prefix="gpu_suite_trace_") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            state, sums = step(state, batch)
            jax.block_until_ready(sums)
        ops = _trace_ops(tmp, top)
    return {"part": "profile", "top_ops": ops}, state


def bench_decode(model, args) -> dict:
    from rollout.jax_engine import JaxEngine, run_to_completion
    from rollout.types import Request, SamplingParams

    def run(engine, batch: int, seed: int) -> float:
        ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, (batch, args.prompt_len))
        sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.new_tokens)
        requests = [Request(f"r{seed}-{i}", ids[i], sampling) for i in range(batch)]
        t0 = time.perf_counter()
        done = run_to_completion(engine, requests)
        elapsed = time.perf_counter() - t0
        short = [o.id for o in done.values() if len(o.tokens) != args.new_tokens]
        if short:
            raise RuntimeError(f"decode batch {batch}: rows {short[:3]} did not generate {args.new_tokens}")
        return elapsed

    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        engine = JaxEngine(model, slots=batch, max_context=args.prompt_len + args.new_tokens,
                           decode_chunk=args.decode_chunk, seed=0)
        try:
            first = run(engine, batch, 0)
            t = statistics.median([run(engine, batch, 1), run(engine, batch, 2)])
        finally:
            engine.close()
        rows.append({"batch": batch, "gen_tok_per_s": round(batch * args.new_tokens / t, 1),
                     "median_s": round(t, 4), "first_s": round(first, 2)})
    return {"part": "decode", "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "decode_chunk": args.decode_chunk, "runs": rows}


def logprob_temp_bytes(rows: int, seq: int, hidden: int, vocab: int, dtype: str, chunk: int,
                       vocab_chunk: int | None = ComputeConfig().logprob_vocab_chunk) -> int:
    """Compiled temp bytes of d/d(hidden, head) sum(log p) over [rows, seq] tokens, `chunk` tokens per chunk (`seq`:
    one chunk) and `vocab_chunk` vocabulary entries per block (None: one block; with `seq` too, the whole
    [rows, seq, vocab] logits). Compiled only: nothing of that size is allocated."""
    shapes = (jax.ShapeDtypeStruct((rows, seq, hidden), jnp.dtype(dtype)),
              jax.ShapeDtypeStruct((vocab, hidden), jnp.float32), jax.ShapeDtypeStruct((rows, seq), jnp.int32))

    def loss(h, head, targets):
        return jnp.sum(token_logprobs(h, head, targets, chunk, 1.0, vocab_chunk)[0])

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def logprob_memory_row(rows: int, seq: int, hidden: int, vocab: int, dtype: str, chunk: int,
                       vocab_chunk: int | None = ComputeConfig().logprob_vocab_chunk) -> dict:
    """Compiled temp memory of the log-prob pass with its gradient, `chunk` tokens per chunk and `vocab_chunk`
    vocabulary entries per block, against unchunked (one chunk, one block)."""
    chunked = logprob_temp_bytes(rows, seq, hidden, vocab, dtype, chunk, vocab_chunk)
    whole = logprob_temp_bytes(rows, seq, hidden, vocab, dtype, seq, None)
    return {"rows": rows, "seq_len": seq, "vocab": vocab, "chunk": chunk, "vocab_chunk": vocab_chunk,
            "chunked_temp_mib": _mib(chunked), "unchunked_temp_mib": _mib(whole),
            "logits_f32_mib": _mib(4 * rows * seq * vocab),
            "saving": round(whole / max(chunked, 1), 1)}


def logprob_memory(cfg, args) -> dict:
    """The log-prob memory row at the model's full vocabulary."""
    return {"part": "logprob_memory", **logprob_memory_row(args.lp_rows, args.lp_seq, cfg.hidden_size,
                                                           cfg.vocab_size, args.dtype, args.lp_chunk)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="full", choices=sorted(SIZES))
    ap.add_argument("--preset", default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--seqs", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--batches", default=None)
    ap.add_argument("--prompt-len", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--lp-rows", type=int, default=None)
    ap.add_argument("--lp-seq", type=int, default=None)
    ap.add_argument("--lp-chunk", type=int, default=None)
    ap.add_argument("--decode-chunk", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--moe", default="auto", help="compute.moe: the grouped expert matmul (auto, ragged_dot, "
                    "segment, gather, dense)")
    ap.add_argument("--top-ops", type=int, default=12)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--skip", default="", help="parts to leave out, comma-separated: train,profile,decode,"
                    "logprob_memory")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    for key, value in SIZES[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    skip = set(filter(None, args.skip.split(",")))
    start = time.perf_counter()
    cfg = model_config(args)
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "devices": jax.device_count(), "size": args.size, "preset": args.preset, "dtype": args.dtype,
           "moe": args.moe}
    print(json.dumps({"env": env}), flush=True)
    parts = {}

    def emit(row: dict) -> None:
        row["elapsed_s"] = round(time.perf_counter() - start, 1)
        parts[row["part"]] = row
        print(json.dumps(row), flush=True)

    if "train" not in skip:
        row, step, (state, batch) = bench_train(cfg, args)
        emit(row)
        if "profile" not in skip:
            row, state = profile_step(step, state, batch, args.top_ops)
            emit(row)
        del step, state, batch
    if "logprob_memory" not in skip:
        emit(logprob_memory(cfg, args))
    if "decode" not in skip:
        emit(bench_decode(create_model(cfg, seed=0), args))
    summary = {"env": env, "parts": parts, "seconds": round(time.perf_counter() - start, 1)}
    return emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
