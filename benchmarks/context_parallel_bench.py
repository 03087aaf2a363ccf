"""Per-device memory of a training pass against row length, with a row's tokens split over 1, 2, 4 or 8 devices.

    PYTHONPATH=. python3 benchmarks/context_parallel_bench.py [--size full|toy] [--out FILE]

About 3 minutes on 2 CPU cores at `--size full` (compiles only: nothing runs, so long rows cost no memory).

On 8 simulated CPU devices, every point compiles the gradient of a log-prob loss (`Ling.token_logprobs`, what the
RL step differentiates) for ONE ROW PER BATCH SHARD on a mesh of fsdp = 8 / context x context: the setting where
a row does not fit one device, and context parallelism is the way to train it. Each point records the compiled
per-device temp memory (`memory_analysis().temp_size_in_bytes`: activations, gathered keys and values, logits
blocks, attention scores) of `bench-tiny` (float32, remat `full`) at row lengths 2k..16k, with `xla` attention in
blocks of 512 queries (the default `compute.attention_chunk`) and of 64, and `flash` attention in blocks of 512
queries x 512 keys. Prints one JSON line per point, then {"summary": ...} with each (length, attention)'s memory
relative to context 1 (also written to --out).
What splits over context: everything per token. What does not: one layer's gathered K/V, the weights each device
gathers, and for `xla` one attention block's scores, [heads, chunk, whole row]: with long rows that block dominates
unless the chunk shrinks or `flash` cuts the keys too (`ringjax plan` counts it as "attention").
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import ringjax  # noqa: E402
from ringjax.sharding import make_mesh, state_shardings  # noqa: E402
from _summary import emit_summary  # noqa: E402

SIZES = {
    "full": {"overrides": {}, "lengths": [2048, 4096, 8192, 16384], "contexts": [1, 2, 4, 8],
             "attention": [("xla", 512), ("xla", 64), ("flash", 512)]},
    "toy": {"overrides": {"num_hidden_layers": 2, "hidden_size": 64, "head_dim": 16, "moe_intermediate_size": 32},
            "lengths": [64, 128], "contexts": [1, 2], "attention": [("xla", 512), ("xla", 16), ("flash", 16)]},
}
DEVICES = 8


def temp_mib(cfg, seq_len: int, context: int) -> dict:
    """Compiled per-device temp memory of the log-prob loss gradient, one row per batch shard."""
    impl, chunk = cfg.compute.attention, cfg.compute.attention_chunk
    mesh = make_mesh(fsdp=DEVICES // context, context=context)
    rows = DEVICES // context
    graphdef, state = nnx.split(ringjax.abstract_model(cfg))
    tokens = jax.ShapeDtypeStruct((rows, seq_len), jnp.int32)

    def loss(state, tokens):
        logp, entropy = nnx.merge(graphdef, state).token_logprobs(tokens)
        return -jnp.mean(logp) - 0.01 * jnp.mean(entropy)

    with jax.set_mesh(mesh):
        compiled = jax.jit(jax.grad(loss), in_shardings=(state_shardings(state, mesh), None)).lower(
            state, tokens).compile()
    return {"seq_len": seq_len, "context": context, "attention": f"{impl}/{chunk}", "fsdp": DEVICES // context,
            "rows": rows,
            "tokens_per_device": seq_len // context,
            "temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1)}


def ratios(points: list[dict]) -> dict:
    """{"seq_len impl/chunk": {context: temp memory / context 1's at that length and attention}}."""
    base = {(p["seq_len"], p["attention"]): p["temp_mib"] for p in points if p["context"] == 1}
    out: dict = {}
    for p in points:
        key = (p["seq_len"], p["attention"])
        out.setdefault(f"{key[0]} {key[1]}", {})[str(p["context"])] = round(p["temp_mib"] / base[key], 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="full", choices=sorted(SIZES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    size, start = SIZES[args.size], time.perf_counter()
    if jax.device_count() != DEVICES:
        raise SystemExit(f"needs {DEVICES} devices (simulated on CPU), have {jax.device_count()}: run it in a fresh "
                         f"process, before anything else starts JAX")
    cfg = ringjax.preset("bench-tiny", **{"compute.dtype": "float32", "compute.param_dtype": "float32",
                                          "compute.remat": "full", "max_position_embeddings": 32768},
                         **size["overrides"])
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": DEVICES, "size": args.size,
           "preset": "bench-tiny", "dtype": "float32", "remat": "full", "logprob_chunk": cfg.compute.logprob_chunk}
    print(json.dumps({"env": env}), flush=True)
    points = []
    for impl, chunk in size["attention"]:
        for seq_len in size["lengths"]:
            for context in size["contexts"]:
                points.append(temp_mib(cfg.replace(**{"compute.attention": impl, "compute.attention_chunk": chunk}),
                                       seq_len, context))
                print(json.dumps(points[-1]), flush=True)
    summary = {"env": env, "points": points, "relative_to_context_1": ratios(points),
               "seconds": round(time.perf_counter() - start, 1)}
    return emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
