"""How cost grows with the work: decode, prefill-memory, train-step and log-prob-memory curves on `bench-tiny`, as PNGs.

    PYTHONPATH=. python3 benchmarks/cost_curves.py [--size full|toy] [--figures docs] [--out FILE]

About 13 minutes on 2 CPU cores at `--size full`, about a minute at `--size toy`.

Every curve varies one thing on `bench-tiny` (float32 compute and weights), everything else fixed:
- `decode_batch` / `decode_context`: generated tokens/s of the embedded engine (`rollout.jax_engine.JaxEngine`,
  slots = batch, max_context = prompt + new tokens, `decode_chunk` 32), timed as `benchmarks/engine_bench.py` does
  (`bench_jax_engine`: median of 2 `run_to_completion` calls after a warm-up, prefill included, every row
  generating every token). Against batch 1..256 at a 64-token prompt + 64 new tokens; against total context
  128..8192 at batch 8 (prompt = context - 64, 64 new tokens), so long contexts time the prompt's prefill mostly
  (quadratic in the prompt; from 4096 on, one timed call instead of `repeats`, each taking minutes). Each context
  point also records the compiled temp memory of the engine's prefill (`prefill_temp_mib`), with attention in blocks
  of `compute.attention_chunk` queries (what runs) and in one block (`whole_row_temp_mib`, compiled only).
- `update_seq_len` / `update_experts`: the RL train step (`benchmarks/train_bench.py`'s `time_steps`: logp_old from
  the gradient pass, C3PO loss, gradient accumulation, AdamW), median of 3 steps after a compiling one, at a FIXED
  TOKEN COUNT per step (4096) and per micro-batch (2048: rows = 2048 / seq_len). Against sequence length 128..2048,
  and against the number of routed experts 4..64 at 256 tokens per sequence with top-2 routing and FIXED ACTIVE
  parameters (`count_params(cfg).active`, asserted equal): the router's hidden x experts weights count as active, so
  the vocabulary moves by the rows whose embedding + head weights offset the router's change (4120 at 4 experts,
  4000 at 64; 4096 at the preset's 16, which is the 256-token point of the seq-len curve, timed once for both).
- `logprob_memory`: compiled temp memory of the log-prob pass with its gradient (`gpu_suite.logprob_memory_row`:
  `token_logprobs`, what the train step differentiates) on 2 x 4096 tokens at hidden 256, vocabulary 4k..256k,
  in chunks of 1024 tokens with vocabulary blocks of 32768 (the defaults `compute.logprob_chunk`,
  `compute.logprob_vocab_chunk`), in token chunks only (the whole vocabulary per chunk), and in one chunk holding
  the whole sequence and vocabulary. Compiled only (`memory_analysis`), so 256k costs no memory.
`--size toy` runs every curve at 2 tiny points on a 2-layer, hidden-64 `bench-tiny` (the test suite does). Prints
one JSON line per point as measured, then {"summary": ...} (also written to --out); draws cost_decode.png,
cost_update.png and cost_logprob_memory.png into --figures. `load_avg` (os.getloadavg) is recorded at the start and
end and per decode point: figures taken while other work loads the machine are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import types

import jax
import jax.numpy as jnp
from flax import nnx

from ringjax.model import abstract_model, count_params, create_model, init_cache, preset
from rollout.jax_engine import _bucket, _prefill_jit
from _summary import emit_summary
from engine_bench import bench_jax_engine
from gpu_suite import _mib, logprob_memory_row, logprob_temp_bytes
from train_bench import time_steps

SIZES = {
    "full": {"overrides": {}, "batches": [1, 2, 4, 8, 16, 32, 64, 128, 256], "prompt_len": 64, "new_tokens": 64,
             "context_batch": 8, "contexts": [128, 256, 512, 1024, 2048, 4096, 8192], "repeats": 2,
             "long_context": 4096,
             "seq_lens": [128, 256, 512, 1024, 2048], "step_tokens": 4096, "micro_tokens": 2048,
             "experts": [4, 8, 16, 32, 64], "experts_seq_len": 256, "runs": 3,
             "vocabs": [4096, 8192, 16384, 32768, 65536, 131072, 262144], "lp_rows": 2, "lp_seq": 4096,
             "lp_chunk": 1024, "lp_vocab_chunk": 32768},
    "toy": {"overrides": {"num_hidden_layers": 2, "hidden_size": 64, "head_dim": 16, "moe_intermediate_size": 32},
            "batches": [1, 2], "prompt_len": 8, "new_tokens": 8, "context_batch": 2, "contexts": [16, 32],
            "repeats": 1, "long_context": 32, "seq_lens": [64, 128], "step_tokens": 256, "micro_tokens": 128,
            "experts": [4, 16], "experts_seq_len": 64, "runs": 1, "vocabs": [4096, 16384], "lp_rows": 1, "lp_seq": 256,
            "lp_chunk": 64, "lp_vocab_chunk": 4096},
}
FLOAT32 = {"compute.dtype": "float32", "compute.param_dtype": "float32"}


def base_config(size: dict, **overrides):
    return preset("bench-tiny", **FLOAT32, **size["overrides"], **overrides)


def fixed_active_config(base, experts: int):
    """`base` with `experts` routed experts and the vocabulary moved so that `count_params(cfg).active` equals
    `base`'s: the router (hidden x experts per layer) counts in full, an extra vocabulary row costs embedding + head."""
    target = count_params(base).active
    cfg = base.replace(num_experts=experts)
    per_row = count_params(cfg.replace(vocab_size=cfg.vocab_size + 1)).active - count_params(cfg).active
    rows, rest = divmod(count_params(cfg).active - target, per_row)
    assert rest == 0, f"{experts} experts: router growth is not a whole number of vocabulary rows"
    cfg = cfg.replace(vocab_size=cfg.vocab_size - rows)
    assert count_params(cfg).active == target
    return cfg


def decode_point(model, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    args = types.SimpleNamespace(prompt_len=prompt_len, new_tokens=new_tokens, seed=0, repeats=repeats)
    return {"batch": batch, "context": prompt_len + new_tokens, "prompt_len": prompt_len,
            **bench_jax_engine(model, batch, 32, args)}


def prefill_temp_mib(model, batch: int, prompt_len: int, max_context: int) -> float:
    """Compiled temp memory of the engine's prefill of `batch` prompts into a cache of `max_context` positions."""
    graphdef, state = nnx.split(model)
    cache = jax.eval_shape(lambda: init_cache(model.config, batch, max_context))
    tokens = jax.ShapeDtypeStruct((batch, _bucket(prompt_len - 1, 16)), jnp.int32)
    compiled = _prefill_jit.lower(graphdef, state, cache, tokens, jax.ShapeDtypeStruct((batch,), jnp.int32)).compile()
    return _mib(compiled.memory_analysis().temp_size_in_bytes)


def context_point(model, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    whole = model.config.replace(**{"compute.attention_chunk": prompt_len + new_tokens})
    whole_model = nnx.merge(nnx.split(abstract_model(whole))[0], nnx.state(model))
    return {**decode_point(model, batch, prompt_len, new_tokens, repeats),
            "prefill_temp_mib": prefill_temp_mib(model, batch, prompt_len, prompt_len + new_tokens),
            "whole_row_temp_mib": prefill_temp_mib(whole_model, batch, prompt_len, prompt_len + new_tokens)}


def update_point(cfg, seq_len: int, step_tokens: int, micro_tokens: int, runs: int) -> dict:
    args = types.SimpleNamespace(seqs=step_tokens // seq_len, seq_len=seq_len, rows=max(1, micro_tokens // seq_len),
                                 runs=runs)
    _, state, batch, first, times = time_steps(cfg, args)
    t = statistics.median(times)
    counts = count_params(cfg)
    return {"seq_len": seq_len, "experts": cfg.num_experts, "top_k": cfg.num_experts_per_tok,
            "vocab": cfg.vocab_size, "params_active": counts.active, "params_total": counts.total,
            "seqs": args.seqs, "rows": args.rows, "micro_batches": batch.micro_batches, "step_s": round(t, 4),
            "tokens_per_s": round(step_tokens / t, 1), "runs_s": [round(x, 4) for x in times],
            "compile_s": round(first - t, 2), "skipped": int(state.skipped)}


def curves(size: dict, emit) -> None:
    """Measures every curve, handing each point to `emit(curve, row)` as soon as it is measured."""
    s = size
    model = create_model(base_config(s, max_position_embeddings=max(4096, *s["contexts"])), seed=0)
    for b in s["batches"]:
        emit("decode_batch", decode_point(model, b, s["prompt_len"], s["new_tokens"], s["repeats"]))
    for c in s["contexts"]:
        repeats = 1 if c >= s["long_context"] else s["repeats"]
        emit("decode_context", context_point(model, s["context_batch"], c - s["new_tokens"], s["new_tokens"],
                                             repeats))
    del model
    base, measured = base_config(s), {}

    def update(cfg, seq_len: int) -> dict:  # a point on both update curves (the preset's experts) is timed once
        if (cfg, seq_len) not in measured:
            measured[cfg, seq_len] = update_point(cfg, seq_len, s["step_tokens"], s["micro_tokens"], s["runs"])
        return measured[cfg, seq_len]

    for n in s["seq_lens"]:
        emit("update_seq_len", update(base, n))
    for e in s["experts"]:
        emit("update_experts", update(fixed_active_config(base, e), s["experts_seq_len"]))
    for v in s["vocabs"]:
        args = (s["lp_rows"], s["lp_seq"], base.hidden_size, v, "float32", s["lp_chunk"])
        tokens_only = logprob_temp_bytes(*args, None)
        emit("logprob_memory", {**logprob_memory_row(*args, s["lp_vocab_chunk"]),
                                "token_chunked_temp_mib": _mib(tokens_only)})


def growth(points: list[dict], x: str, y: str) -> dict:
    """First and last point of a curve and the ratios between them (how much y moved for how much x)."""
    a, b = points[0], points[-1]
    return {x: [a[x], b[x]], y: [a[y], b[y]], "x_ratio": round(b[x] / a[x], 2), "y_ratio": round(b[y] / a[y], 3)}


def findings(c: dict) -> dict:
    best = max(c["decode_batch"], key=lambda r: r["gen_tok_per_s"])
    return {"decode_best_batch": best["batch"], "decode_best_tok_per_s": best["gen_tok_per_s"],
            "decode_batch": growth(c["decode_batch"], "batch", "gen_tok_per_s"),
            "decode_context": growth(c["decode_context"], "context", "gen_tok_per_s"),
            "prefill_memory": growth(c["decode_context"], "context", "prefill_temp_mib"),
            "prefill_memory_one_block": growth(c["decode_context"], "context", "whole_row_temp_mib"),
            "update_seq_len": growth(c["update_seq_len"], "seq_len", "step_s"),
            "update_experts": growth(c["update_experts"], "experts", "step_s"),
            "logprob_chunked": growth(c["logprob_memory"], "vocab", "chunked_temp_mib"),
            "logprob_token_chunked": growth(c["logprob_memory"], "vocab", "token_chunked_temp_mib"),
            "logprob_unchunked": growth(c["logprob_memory"], "vocab", "unchunked_temp_mib")}


def draw(c: dict, folder: str, title: str) -> list[str]:
    """The three figures, log-log, one marker per measured point; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel(ax, rows, x, ys, xlabel, ylabel, sub):
        for key, label in ys:
            ax.plot([r[x] for r in rows], [r[key] for r in rows], "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set(yscale="log", xlabel=xlabel, ylabel=ylabel, title=sub)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(True, which="both", alpha=0.3)
        if len(ys) > 1:
            ax.legend()

    figures = [
        ("cost_decode.png", [("decode_batch", "batch", [("gen_tok_per_s", "")], "batch (slots)", "generated tokens/s",
                              "vs batch (context fixed)"),
                             ("decode_context", "context", [("gen_tok_per_s", "")], "total context (tokens)",
                              "generated tokens/s", "vs context (batch, new tokens fixed)"),
                             ("decode_context", "context", [("whole_row_temp_mib", "one block"),
                                                            ("prefill_temp_mib", "blocks of attention_chunk")],
                              "total context (tokens)", "compiled temp memory (MiB)", "prefill memory vs context")]),
        ("cost_update.png", [("update_seq_len", "seq_len", [("step_s", "")], "sequence length (tokens)",
                              "train step (s)", "vs seq len (fixed tokens per step)"),
                             ("update_experts", "experts", [("step_s", "")], "routed experts (top-2)",
                              "train step (s)", "vs experts (fixed active params)")]),
        ("cost_logprob_memory.png", [("logprob_memory", "vocab", [("unchunked_temp_mib", "unchunked"),
                                                                  ("token_chunked_temp_mib", "token chunks"),
                                                                  ("chunked_temp_mib", "token chunks + vocab blocks")],
                                      "vocabulary", "compiled temp memory (MiB)", "log-prob + grad memory")]),
    ]
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, panels in figures:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
        for ax, (curve, x, ys, xlabel, ylabel, sub) in zip(axes[0], panels):
            panel(ax, c[curve], x, ys, xlabel, ylabel, sub)
        fig.suptitle(title)
        fig.tight_layout()
        paths.append(os.path.join(folder, name))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="full", choices=sorted(SIZES))
    ap.add_argument("--figures", default="docs", help="folder the PNGs are drawn into")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "cpu_count": os.cpu_count(), "size": args.size, "preset": "bench-tiny", "dtype": "float32",
           "load_avg_start": list(os.getloadavg())}
    print(json.dumps({"env": env}), flush=True)
    measured: dict[str, list[dict]] = {}

    def emit(curve: str, row: dict) -> None:
        row = {"curve": curve, **row, "elapsed_s": round(time.perf_counter() - start, 1)}
        measured.setdefault(curve, []).append(row)
        print(json.dumps(row), flush=True)

    curves(SIZES[args.size], emit)
    env["load_avg_end"] = list(os.getloadavg())
    figures = draw(measured, args.figures, f"ringjax cost curves: bench-tiny, {env['backend']}, float32")
    summary = {"env": env, "curves": measured, "findings": findings(measured), "figures": figures,
               "seconds": round(time.perf_counter() - start, 1)}
    return emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
