"""Where the time goes where ringjax misses a speed target: op profiles of decode and of the train step.

    PYTHONPATH=. python3 benchmarks/profile_gaps.py [--size full|toy] [--out FILE]

About a minute on 2 CPU cores at `--size full`, seconds at `--size toy` (the test suite runs it). Sizes are set in
`SIZES`. Two parts (`--skip` leaves one out), each one JSON line, then {"summary": ...}:
- `decode`: the embedded engine (`JaxEngine` on `decode_preset`, float32; full: bench-100m, batch 8, a 64-token
  prompt + 128 new tokens, `decode_chunk` 32) traced over one `run_to_completion` after a warm-up: the top ops by
  time and their share, the share of every op whose name holds "gather" (the MoE `gather` kernel copies each
  tile's expert matrix before its matmul; the embedding lookup and routing gathers are small beside it), and the
  bytes a decode step must read: every routed expert's float32 matrices against all weights.
- `update`: one train step of `benchmarks/train_bench.py` (`update_preset`; full: bench-tiny, 16 x 256 tokens in
  micro-batches of 4 rows) traced after a compiling one: the top ops, the share of the top 1 and of the top 25
  (how flat the profile is), and the step's active-parameter FLOPs (6 x active x tokens) over its time.
Device time per op name comes from the Perfetto trace (`gpu_suite._trace_ops`), kept to XLA's own ops (HLO names
such as `gather_bitcast_fusion.2` or `ynn_fusion.9`): host-side events (`np.asarray(...)`, `ArrayImpl....`) and
control-flow containers (`while`, `conditional`, `call`, whose time holds their bodies') are left out, and the
shares are of what remains.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import types

import jax

from ringjax.model import count_params, create_model, preset
from _summary import emit_summary
from engine_bench import _requests
from gpu_suite import _trace_ops
from rollout.jax_engine import JaxEngine, run_to_completion
from train_bench import time_steps

SIZES = {
    "full": {"decode_preset": "bench-100m", "batch": 8, "prompt_len": 64, "new_tokens": 128,
             "update_preset": "bench-tiny", "seqs": 16, "seq_len": 256, "rows": 4, "overrides": {}},
    "toy": {"decode_preset": "bench-tiny", "batch": 2, "prompt_len": 8, "new_tokens": 8,
            "update_preset": "bench-tiny", "seqs": 2, "seq_len": 64, "rows": 2,
            "overrides": {"num_hidden_layers": 2, "hidden_size": 64, "head_dim": 16, "moe_intermediate_size": 32}},
}
FLOAT32 = {"compute.dtype": "float32", "compute.param_dtype": "float32"}
TOP = 25
HLO = re.compile(r"[a-z][a-z0-9_\-]*(\.[0-9]+)?")
CONTAINERS = ("while", "conditional", "call")


def traced(fn) -> tuple[float, list[dict]]:
    """(seconds, every op by device time) of `fn()` under the profiler."""
    with tempfile.TemporaryDirectory(prefix="profile_gaps_") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        return seconds, _trace_ops(tmp, 10_000)


def shares(ops: list[dict], top: int) -> dict:
    """XLA's own ops (see the module docstring), each with its share of their total."""
    ops = [o for o in ops if HLO.fullmatch(o["op"]) and o["op"].split(".")[0] not in CONTAINERS]
    total = sum(o["ms"] for o in ops) or 1.0
    ops = [{**o, "share": round(o["ms"] / total, 4)} for o in ops]
    gather = sum(o["ms"] for o in ops if "gather" in o["op"])
    return {"traced_ms": round(total, 1), "top1_share": ops[0]["share"] if ops else 0.0,
            f"top{top}_share": round(sum(o["share"] for o in ops[:top]), 4),
            "gather_share": round(gather / total, 4), "top_ops": ops[:top]}


def expert_bytes(cfg) -> dict:
    """Bytes of float32 weights: every routed expert's three matrices (what a decode step reads when its rows touch
    every expert) and all parameters."""
    routed = cfg.num_moe_layers * cfg.num_experts * 3 * cfg.hidden_size * cfg.moe_intermediate_size * 4
    return {"routed_expert_mb": round(routed / 1e6, 1), "all_weights_mb": round(count_params(cfg).total * 4 / 1e6, 1)}


def profile_decode(s: dict) -> dict:
    cfg = preset(s["decode_preset"], **FLOAT32, **s["overrides"])
    model = create_model(cfg, seed=0)
    engine = JaxEngine(model, slots=s["batch"], max_context=s["prompt_len"] + s["new_tokens"], decode_chunk=32)
    try:
        def run(seed: int):
            run_to_completion(engine, _requests(cfg.vocab_size, s["batch"], s["prompt_len"], s["new_tokens"], seed))

        run(0)
        seconds, ops = traced(lambda: run(1))
    finally:
        engine.close()
    return {"part": "decode", "preset": s["decode_preset"], "batch": s["batch"], "prompt_len": s["prompt_len"],
            "new_tokens": s["new_tokens"], "seconds": round(seconds, 3),
            "gen_tok_per_s": round(s["batch"] * s["new_tokens"] / seconds, 1), **expert_bytes(cfg),
            **shares(ops, TOP)}


def profile_update(s: dict) -> dict:
    cfg = preset(s["update_preset"], **FLOAT32, **s["overrides"])
    args = types.SimpleNamespace(seqs=s["seqs"], seq_len=s["seq_len"], rows=s["rows"], runs=1)
    step, state, batch, _, times = time_steps(cfg, args)

    def run():
        _, sums = step(state, batch)
        jax.block_until_ready(sums)

    seconds, ops = traced(run)
    tokens = s["seqs"] * s["seq_len"]
    flops = 6 * count_params(cfg).active * tokens
    return {"part": "update", "preset": s["update_preset"], "tokens": tokens, "seconds": round(seconds, 3),
            "untraced_s": round(times[0], 3), "gflop": round(flops / 1e9, 1),
            "gflop_per_s": round(flops / 1e9 / times[0], 1), **shares(ops, TOP)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="full", choices=sorted(SIZES))
    ap.add_argument("--skip", default="", help="parts to leave out, comma-separated: decode,update")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    s, skip = SIZES[args.size], set(filter(None, args.skip.split(",")))
    print(json.dumps({"env": {"jax": jax.__version__, "backend": jax.default_backend(), "size": args.size}}),
          flush=True)
    parts = {}
    for name, fn in (("decode", profile_decode), ("update", profile_update)):
        if name not in skip:
            parts[name] = fn(s)
            print(json.dumps(parts[name]), flush=True)
    return emit_summary({"size": args.size, "parts": parts}, args.out)


if __name__ == "__main__":
    main()
