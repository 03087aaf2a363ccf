"""Seconds per weight update, per transfer path, against the memory-copy bound of the same bytes.

    PYTHONPATH=. python3 benchmarks/weight_sync_bench.py [--size bench-100m] [--repeats 3] [--lrs 1e-6,1e-5]
        [--bucket-mb 64] [--skip-ray] [--skip-sglang] [--out docs/weight_sync.json]

The policy is `--size`'s model; what travels is its weights in bfloat16 (`bytes`). Per path, the median of --repeats
updates after one warm-up (`first_s`):
- copy_bound: `np.copyto` of every bfloat16 tensor into a preallocated one: the least any transfer of these bytes
  costs on this machine (one pass of reads and writes; `copy_gb_per_s`).
- cast_to_bfloat16: the trainer's cast of its float32 weights (part of every Ray update below).
- jax_engine_in_process: `JaxEngine.update_weights` with the trainer's live model (no transfer: a state swap).
- jax_engine_load_host_weights: the same engine given the bfloat16 host weights: what a worker does with what it
  received (builds a float32 model from them and swaps it in), without any transfer.
- ray_full: `RayEnginePool.update_weights` with one worker (`rollout.weight_dtype=bfloat16`): cast, put into the
  object store, the worker reads it and loads its engine.
- ray_shards: `rollout.shards.send_weights` from this process (the only sender) to the same kind of worker: the
  trainer's shards copied to the host and cast bucket by bucket (--bucket-mb), put, assembled by the worker, loaded.
- ray_delta/lr=...: the same pool with `rollout.weight_delta`, after an update of the float32 master weights by one
  Adam-like step of size lr per element (lr * sign of a normal draw: Adam's first step, an upper bound on
  later ones); `changed_fraction` of the bfloat16 elements and the delta's bytes, plus the time of `make_delta` and
  `apply_delta` alone. The worker rebuilds the full weights and checks every tensor's CRC-32.
- sglang_distributed / sglang_disk: `SGLangEngine.update_weights` on a CPU SGLang server (bfloat16) of the same
  model: buckets broadcast over gloo, or `save_pretrained` + `/update_weights_from_disk`.
`over_copy_bound` = seconds / copy bound. Prints one JSON line per path and a final {"summary": ...} (also --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from ringjax.hf import save_pretrained
from ringjax.model import create_model, preset
from rollout.jax_engine import JaxEngine
from rollout.shards import send_weights
from rollout.weight_delta import apply_delta, cast_weights, make_delta
from rollout.weights import flat_weights
from _summary import emit_summary

TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def _median(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "runs_s": [round(t, 4) for t in times]}


def _timed(fn, repeats: int) -> dict:
    """One warm-up call, then `repeats` timed ones (fn gets the call's index, 0 = warm-up)."""
    t0 = time.perf_counter()
    fn(0)
    first = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i + 1)
        times.append(time.perf_counter() - t0)
    return {**_median(times), "first_s": round(first, 3)}


def adam_like_step(master: dict[str, np.ndarray], lr: float, seed: int) -> dict[str, np.ndarray]:
    """`master` moved by lr * sign(N(0, 1)) per floating element (Adam's first step has exactly this size)."""
    rng = np.random.default_rng(seed)
    return {k: (v - lr * np.sign(rng.standard_normal(v.shape, np.float32))).astype(v.dtype)
            if np.issubdtype(v.dtype, np.floating) else v for k, v in master.items()}


def bench_copy(sent: dict[str, np.ndarray], repeats: int) -> dict:
    dst = {k: np.empty_like(v) for k, v in sent.items()}

    def copy(_):
        for k, v in sent.items():
            np.copyto(dst[k], v)
    return _timed(copy, repeats)


def bench_delta_math(master, lr: float, repeats: int) -> dict:
    """How much of the bfloat16 weights one step moves, what the delta weighs, and its cost on each end."""
    base = cast_weights(master, "bfloat16")
    new = cast_weights(adam_like_step(master, lr, 1), "bfloat16")
    moved = sum(int(np.count_nonzero(base[k].view(np.uint16) != new[k].view(np.uint16)))
                for k in base if base[k].dtype.name == "bfloat16")
    total = sum(v.size for v in base.values() if v.dtype.name == "bfloat16")
    delta = make_delta(base, new, 0, 1)
    make = _timed(lambda _: make_delta(base, new, 0, 1), repeats)
    apply = _timed(lambda _: apply_delta(base, delta, 0), repeats)
    return {"changed_fraction": round(moved / total, 5), "whole_tensors": len(delta.whole),
            "sparse_tensors": len(delta.sparse), "delta_bytes": delta.nbytes,
            "delta_over_full": round(delta.nbytes / sum(v.nbytes for v in base.values()), 4),
            "make_delta_s": make["median_s"], "apply_delta_s": apply["median_s"]}


def bench_jax_engine(model, sent: dict[str, np.ndarray], repeats: int) -> dict:
    """The engine in the trainer's process, given the live model (a state swap), and given host weights (what a
    worker does with what it received: build the model from them, float32, and swap it in)."""
    engine = JaxEngine(model, slots=2, max_context=64)
    try:
        return {"jax_engine_in_process": _timed(lambda i: engine.update_weights(model, i), repeats),
                "jax_engine_load_host_weights": _timed(lambda i: engine.update_weights(sent, i), repeats)}
    finally:
        engine.close()


def bench_ray(model, master, lrs: list[float], repeats: int, bucket_bytes: int) -> dict:
    import ray

    from rollout.ray_pool import RayEnginePool
    from rollout.ray_worker import JaxEngineFactory

    rows = {}
    try:
        env = {"env_vars": {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}}
        factory = JaxEngineFactory(model.config, master, slots=2, max_context=64)
        live = flat_weights(model)  # the trainer's device arrays
        for mode in ("full", "shards", "delta"):
            pool = RayEnginePool(factory, 1, runtime_env=env, weight_dtype="bfloat16", delta=mode == "delta",
                                 name=f"weight-sync-bench-{mode}")
            try:
                if mode == "full":
                    rows["ray_full"] = _timed(lambda i, p=pool: p.update_weights(master, i), repeats)
                    continue
                if mode == "shards":
                    rows["ray_shards"] = _timed(lambda i, p=pool: send_weights(
                        p.workers, live, i, dtype="bfloat16", bucket_bytes=bucket_bytes), repeats)
                    rows["ray_shards"]["bucket_bytes"] = bucket_bytes
                    continue
                for lr in lrs:
                    steps = [master]
                    for i in range(repeats + 1):
                        steps.append(adam_like_step(steps[-1], lr, 100 + i))
                    pool.update_weights(steps[0], 0)  # the base of the first delta
                    before = dict(pool.stats)
                    row = _timed(lambda i, p=pool, s=steps: p.update_weights(s[i + 1], i + 1), repeats)
                    updates = pool.stats["delta_updates"] - before.get("delta_updates", 0)
                    row["delta_bytes_per_update"] = (pool.stats["sync_bytes"] - before["sync_bytes"]) // updates
                    row["delta_repairs"] = pool.stats["delta_repairs"] - before.get("delta_repairs", 0)
                    rows[f"ray_delta/lr={lr:g}"] = row
            finally:
                pool.close()
    finally:
        ray.shutdown()
    return rows


@contextlib.contextmanager
def sglang_engine(model, args):
    if TESTS_DIR not in sys.path:  # the CPU environment and the sgl_kernel stand-in live with the tests
        sys.path.insert(0, TESTS_DIR)
    from sglang_support.runner import engine_env, sglang_version

    from rollout.sglang.engine import SGLangConfig, SGLangEngine

    with tempfile.TemporaryDirectory(prefix="weight_sync_bench_") as tmp:
        path = save_pretrained(model, os.path.join(tmp, "model"))
        config = SGLangConfig(path, device="cpu", dtype="bfloat16", sync_dtype="bfloat16", max_total_tokens=1024,
                              context_length=256, start_timeout_s=args.sglang_start_timeout)
        engine = SGLangEngine(config, env=engine_env(), model_config=model.config)
        try:
            yield engine, sglang_version()
        finally:
            engine.close()


def bench_sglang(model, args) -> dict:
    rows = {}
    with sglang_engine(model, args) as (engine, version):
        for method in ("distributed", "disk"):
            rows[f"sglang_{method}"] = {**_timed(lambda i, m=method: engine.update_weights(model, i, method=m),
                                                 args.repeats), "sglang": version}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="bench-100m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lrs", default="1e-6,1e-5")
    ap.add_argument("--bucket-mb", type=int, default=64)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-sglang", action="store_true")
    ap.add_argument("--sglang-start-timeout", type=float, default=600.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]
    if not args.skip_ray:  # Ray forks its processes: start it before JAX starts threads (as the pipeline does)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        from rollout.ray_pool import start_ray
        start_ray(None, include_dashboard=False)

    model = create_model(preset(args.size))
    master = {k: np.asarray(v) for k, v in flat_weights(model).items()}
    sent = cast_weights(master, "bfloat16")
    nbytes = sum(v.nbytes for v in sent.values())
    rows = {"copy_bound": bench_copy(sent, args.repeats)}
    bound = rows["copy_bound"]["median_s"]
    rows["copy_bound"]["copy_gb_per_s"] = round(nbytes / bound / 1e9, 2)
    for lr in lrs:
        rows[f"delta_math/lr={lr:g}"] = bench_delta_math(master, lr, args.repeats)
    rows["cast_to_bfloat16"] = _timed(lambda _: cast_weights(master, "bfloat16"), args.repeats)
    rows.update(bench_jax_engine(model, sent, args.repeats))
    if not args.skip_ray:
        rows.update(bench_ray(model, master, lrs, args.repeats, args.bucket_mb << 20))
    if not args.skip_sglang:
        rows.update(bench_sglang(model, args))
    for name, row in rows.items():
        if "median_s" in row:
            row["over_copy_bound"] = round(row["median_s"] / bound, 1)
        print(json.dumps({"path": name, **row}), flush=True)
    summary = {"size": args.size, "params": sum(v.size for v in master.values()), "bytes": nbytes,
               "repeats": args.repeats, "load_avg_after": round(os.getloadavg()[0], 2), "rows": rows}
    emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
