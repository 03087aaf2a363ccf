"""Decode throughput of the embedded JAX engine and of SGLang on the same exported model, same batch.

    PYTHONPATH=. python3 benchmarks/engine_bench.py [--sizes bench-tiny,bench-100m] [--batches 8,32]
        [--chunks 8,32] [--repeats 3] [--tunix-python V/bin/python] [--skip-sglang] [--skip-static] [--out FILE]

The decode protocol of docs/benchmarks.md: `batch` prompts of --prompt-len random ids, --new-tokens new
tokens, temperature 1.0, top_p 1.0, no stop ids and max_tokens = --new-tokens, so every row generates every token
(checked: a row that comes back shorter, or with another finish than "length", is an error). Per size and batch:
- jax_engine: `rollout.jax_engine.JaxEngine` with slots = batch, max_context = prompt + new tokens, once per
  --chunks value (`decode_chunk`, the decode steps per jitted call, i.e. per host round trip), driven by
  `run_to_completion` from submit to the last output (prefill included);
- static: `ringjax.generate.generate` on the same batch, as `benchmarks/model_bench.py` measures it (reference);
- sglang: the model exported with `ringjax.save_pretrained` to a temporary folder, ONE `SGLangEngine` per size
  (SGLang 0.5.23 on CPU, float32, KV pool sized for the largest batch), driven the same way as the JAX engine;
- tunix: Tunix 0.1.7's Sampler on its own Qwen3-MoE at the same size (`benchmarks/peers/tunix_parts.py --part decode`,
  run by `--tunix-python`, the python of a virtualenv with google-tunix 0.1.7 and jax[cpu]), same prompts, lengths
  and sampling; a missing interpreter or a failed run is reported as {"missing": why}.
`gen_tok_per_s` = batch * new tokens / wall time; each figure is the median of --repeats timed runs after one
warm-up run (`first_s`: the warm-up, compile included); `best_tok_per_s` uses the fastest run. `load_avg` is the
1-minute load average before and after each measurement: figures taken while other work loads the machine are not
comparable (SGLang's CPU path, whose OpenMP threads are pinned to the cores, suffers most).

`targets` holds docs/benchmarks.md's bar for the embedded JAX engine: 2x the best peer of each column, among the peers
measured in this run only (no figure of another run or machine is compared), with pass / fail for the best
`decode_chunk`, and `jax_over_sglang` (the GPU bar is 0.8x SGLang on the same model and batch). Prints one JSON line per
measurement and a final {"summary": ...} line (also written to --out). Device-agnostic for the JAX side; SGLang is
started with --device cpu.
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

import jax
import numpy as np
from flax import nnx

from ringjax.hf import save_pretrained
from ringjax.model import create_model, preset
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.types import Request, SamplingParams
from _peer import run_peer
from _summary import emit_summary
from model_bench import bench_decode

TARGET_FACTOR = 2.0  # the embedded JAX engine must reach 2x the best peer in every column
TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def _column(size: str, batch: int) -> str:
    return f"{size.removeprefix('bench-')}/b{batch}"


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _requests(vocab: int, batch: int, prompt_len: int, new_tokens: int, seed: int) -> list[Request]:
    ids = np.random.default_rng(seed).integers(0, vocab, (batch, prompt_len))
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=new_tokens)
    return [Request(f"r{seed}-{i}", ids[i], sampling) for i in range(batch)]


def _time_engine(engine, vocab: int, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """Warm-up run, then `repeats` timed `run_to_completion` calls, each on fresh random prompts."""

    def run(seed: int) -> float:
        requests = _requests(vocab, batch, prompt_len, new_tokens, seed)
        t0 = time.perf_counter()
        done = run_to_completion(engine, requests)
        elapsed = time.perf_counter() - t0
        bad = [(o.id, o.finish, len(o.tokens), o.error) for o in done.values()
               if o.finish != "length" or len(o.tokens) != new_tokens]
        if bad:
            raise RuntimeError(f"rows that did not generate {new_tokens} tokens: {bad[:3]}")
        return elapsed

    load_before = _load()
    first = run(0)
    times = [run(1 + i) for i in range(repeats)]
    t = statistics.median(times)
    return {"gen_tok_per_s": round(batch * new_tokens / t, 1),
            "best_tok_per_s": round(batch * new_tokens / min(times), 1), "median_s": round(t, 4),
            "runs_s": [round(x, 4) for x in times], "first_s": round(first, 2), "load_avg": [load_before, _load()]}


def bench_jax_engine(model, batch: int, chunk: int, args) -> dict:
    engine = JaxEngine(model, slots=batch, max_context=args.prompt_len + args.new_tokens, decode_chunk=chunk,
                       seed=args.seed)
    try:
        row = _time_engine(engine, model.config.vocab_size, batch, args.prompt_len, args.new_tokens, args.repeats)
    finally:
        engine.close()
    return {"decode_chunk": chunk, **row}


def bench_static(model, batch: int, args) -> dict:
    load_before = _load()
    row = bench_decode(model, batch, args.prompt_len, args.new_tokens, args.repeats)
    return {**row, "load_avg": [load_before, _load()]}


@contextlib.contextmanager
def sglang_engine(model, batches: list[int], args, routed_experts: bool = False):
    """One SGLang server on `model`, exported to a temporary folder; killed (close) on exit. `routed_experts`: every
    output carries its routing record (`SGLangConfig.return_routed_experts`); off by default, so that the throughput
    rows time generation alone."""
    if TESTS_DIR not in sys.path:  # the CPU environment and the sgl_kernel stand-in live with the tests
        sys.path.insert(0, TESTS_DIR)
    from sglang_support.runner import engine_env, sglang_version

    from rollout.sglang.engine import SGLangConfig, SGLangEngine

    with tempfile.TemporaryDirectory(prefix="engine_bench_") as tmp:
        path = save_pretrained(model, os.path.join(tmp, "model"))
        context = args.prompt_len + args.new_tokens
        config = SGLangConfig(path, device="cpu", dtype="float32", max_total_tokens=max(batches) * context + 1024,
                              context_length=context + 64, start_timeout_s=args.sglang_start_timeout,
                              server_args=("--max-running-requests", str(max(batches))),
                              return_routed_experts=routed_experts)
        t0 = time.perf_counter()
        engine = SGLangEngine(config, env=engine_env(), model_config=model.config)
        try:
            yield engine, {"sglang": sglang_version(), "start_s": round(time.perf_counter() - t0, 1)}
        finally:
            engine.close()


def bench_tunix(size: str, args) -> dict:
    """{batch: Tunix's decode row} for this size, or {"missing": why}."""
    lines = run_peer(args.tunix_python, "tunix_parts.py",
                     ["--part", "decode", "--size", size, "--batches", args.batches, "--prompt-len",
                      str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--runs", str(args.repeats),
                      "--seed", str(args.seed)], args.peer_timeout)
    return lines if isinstance(lines, dict) else {line["batch"]: line for line in lines}


def targets(results: list[dict]) -> dict:
    """Per column: the best peer measured in this run, 2x its figure, and whether the JAX engine's best
    decode_chunk reaches it. A column without a measured peer gets no target."""
    out = {}
    for r in results:
        peers = {name: r[name]["gen_tok_per_s"] for name in ("tunix", "sglang")
                 if isinstance(r.get(name), dict) and "gen_tok_per_s" in r[name]}
        if not peers or not r.get("jax_engine"):
            continue
        best_peer = max(peers, key=peers.get)
        best = max(r["jax_engine"], key=lambda x: x["gen_tok_per_s"])
        entry = {"best_peer": best_peer, "best_peer_tok_per_s": peers[best_peer],
                 "target_tok_per_s": TARGET_FACTOR * peers[best_peer], "jax_engine_tok_per_s": best["gen_tok_per_s"],
                 "decode_chunk": best["decode_chunk"],
                 "ratio_to_best_peer": round(best["gen_tok_per_s"] / peers[best_peer], 2),
                 "passed": best["gen_tok_per_s"] >= TARGET_FACTOR * peers[best_peer]}
        if "sglang" in peers:
            entry["jax_over_sglang"] = round(best["gen_tok_per_s"] / peers["sglang"], 2)
        out[r["column"]] = entry
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="bench-tiny,bench-100m")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--chunks", default="8,32", help="JaxEngine decode_chunk values to measure")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tunix-python", default=None, help="the python of a virtualenv with google-tunix 0.1.7")
    ap.add_argument("--peer-timeout", type=float, default=3600.0)
    ap.add_argument("--skip-sglang", action="store_true")
    ap.add_argument("--skip-static", action="store_true", help="leave out the static sampler reference")
    ap.add_argument("--sglang-start-timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    chunks = [int(c) for c in args.chunks.split(",")]
    dev = jax.devices()[0]
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": dev.device_kind,
           "cpu_count": os.cpu_count(), "dtype": "float32", "prompt_len": args.prompt_len,
           "new_tokens": args.new_tokens, "repeats": args.repeats, "load_avg_start": list(os.getloadavg())}
    print(json.dumps({"env": env}), flush=True)
    results = []
    for size in args.sizes.split(","):
        cfg = preset(size, **{"compute.dtype": "float32", "compute.param_dtype": "float32"})
        model = create_model(cfg, seed=args.seed)
        params = int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
        rows = []
        for batch in batches:
            row = {"size": size, "column": _column(size, batch), "params": params, "batch": batch,
                   "jax_engine": [bench_jax_engine(model, batch, c, args) for c in chunks]}
            if not args.skip_static:
                row["static"] = bench_static(model, batch, args)
            rows.append(row)
        if args.tunix_python:
            tunix = bench_tunix(size, args)
            for row in rows:
                row["tunix"] = tunix if "missing" in tunix else tunix.get(row["batch"], {"missing": "no row"})
        if not args.skip_sglang:
            with sglang_engine(model, batches, args) as (engine, info):
                env.setdefault("sglang", info["sglang"])
                for row in rows:
                    row["sglang"] = {**_time_engine(engine, cfg.vocab_size, row["batch"], args.prompt_len,
                                                    args.new_tokens, args.repeats), "start_s": info["start_s"]}
        for row in rows:
            print(json.dumps(row), flush=True)
        results += rows
    env["load_avg_end"] = list(os.getloadavg())
    table = {r["column"]: {"jax_engine": {f"chunk{x['decode_chunk']}": x["gen_tok_per_s"] for x in r["jax_engine"]},
                           **({"static": r["static"]["gen_tok_per_s"]} if "static" in r else {}),
                           **{peer: r[peer].get("gen_tok_per_s", r[peer].get("missing"))
                              for peer in ("sglang", "tunix") if peer in r}}
             for r in results}
    summary = {"env": env, "results": results, "decode_gen_tok_per_s": table, "targets": targets(results)}
    return emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
