"""Train-inference mismatch of each controlled source (`rollout.numerics`), on one model and one set of prompts.

    PYTHONPATH=. python3 benchmarks/mismatch_sources.py [--checkpoint STEP_DIR] [--sft-steps 150] [--prompts 48]
        [--samples 2] [--fp8-blocks 128,32] [--noise 0.01,0.03,0.1,0.3] [--sources fp32,sglang] [--skip-sglang]
        [--smoke] [--out FILE]

The model: the demo's (ringjax/pipeline/demo.yaml: tiny Ling 2.0 MoE, byte-level BPE tokenizer, synthetic math
tasks) after a short SFT run of the demo's own recipe (`ringjax.pipeline.stages`: setup, sft, checkpoint pick),
math prompts only, so no code sandbox is needed; or the model of `--checkpoint` (a step folder of a demo run, whose
run folder holds the tokenizer). A trained model matters: a random init's near-uniform distributions hide the
mismatch that sharper distributions show.

Per source: an embedded `JaxEngine` with that `EngineNumerics` (or an SGLang server on the exported model, float32
on CPU, routing records on, when `import sglang` works) samples --samples responses to each of --prompts RL prompts
of the demo, at its RL settings (temperature, max_new_tokens, eos), with the same sampling seed. Those tokens are
then scored by the trainer's own float32 function (`make_score_fn` -> `sequence_logprobs`, on the packed micro-batches
the train step would see) and each response token gives d = log pi_train - log pi_infer. Reported: mean, p99 and
max of |d|, the mean of d, the fraction of tokens outside IcePop's band (k = exp(d) outside [alpha, beta] of
`LossConfig`, Ring-1T's [0.5, 5]), and how often the trainer's top-k expert set differs from the engine's routing
record (`ringjax.trainer.diagnostics`, the metric every run logs; both engines return records).

`fp32` is the baseline: the same numerics on both sides, KV-cache decode against the full forward. Prints one JSON
line per source and a final {"summary": ...} line (also written to --out). docs/mismatch.md holds the table.
`--sources` measures only the named rows (names as printed: "fp32", "moe=dense", "bf16", "fp8 block128",
"noise 0.01", "sglang"), e.g. to refill one row of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from ringjax.losses import LossConfig
from ringjax.pipeline import stages
from ringjax.pipeline.config import load_pipeline
from ringjax.trainer import diagnostics
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.c3po import Response, StepBatch, pack_micro_batches
from ringjax.trainer.model_checkpoint import restore_model
from ringjax.trainer.state import merge_model, split_model
from ringjax.trainer.step import device_batch, make_score_fn
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.numerics import EngineNumerics
from rollout.types import Request, SamplingParams
from _summary import emit_summary

MATH_ONLY = ["data.synthetic.code=0", "stages=[]"]  # the demo's math tasks; no sandbox needed
ROWS = 16  # micro-batch rows of the scoring pass (the demo's rl.rows)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- model and prompts -------------------------------------------------------------------------------------------------
def _run_folder(path: str) -> str:
    """The run folder of a checkpoint: the nearest folder at or above `path` holding tokenizer/tokenizer.json."""
    folder = os.path.abspath(path)
    while True:
        if os.path.isfile(os.path.join(folder, "tokenizer", "tokenizer.json")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            raise FileNotFoundError(f"--checkpoint {path}: no folder at or above it holds tokenizer/tokenizer.json "
                                    "(give a checkpoint inside a pipeline run folder)")
        folder = parent


def demo_model(args, work: str):
    """(model, pipeline context, SFT info): the demo's model after `--sft-steps` of its SFT, or --checkpoint's."""
    if args.checkpoint:
        cfg = load_pipeline(None, [f"out={_run_folder(args.checkpoint)}", f"seed={args.seed}", *MATH_ONLY])
        ctx = stages.setup(cfg, log, rl=False)  # the run's own tokenizer (out/tokenizer), the demo's prompts
        return restore_model(args.checkpoint), ctx, {"checkpoint": os.path.abspath(args.checkpoint)}
    n = args.sft_steps
    overrides = [f"out={work}", f"seed={args.seed}", *MATH_ONLY]
    if n:
        overrides += [f"sft.train.steps={n}", f"sft.train.optim.total_steps={n}", f"sft.train.checkpoint_every={n}",
                      f"sft.train.optim.warmup_steps={min(10, n - 1)}"]
    if args.smoke:
        overrides += ["data.synthetic.math=60", "data.synthetic.sft_per_domain=64", "data.synthetic.eval_per_domain=8"]
    cfg = load_pipeline(None, overrides)
    ctx = stages.setup(cfg, log, rl=False)
    if not n:  # the demo's random init: only to check that the script runs
        return ctx.initial_model(), ctx, {"sft_steps": 0}
    t0 = time.perf_counter()
    result = stages.sft(ctx, ctx.initial_model(), None, None)
    info = {"sft_steps": n, "sft_s": round(time.perf_counter() - t0, 1), "eval_entropy": round(result["entropy"], 4)}
    return restore_model(os.path.join(cfg.out, result["picked_dir"])), ctx, info


def requests_of(ctx, args) -> list[Request]:
    """--samples requests for each of --prompts math prompts (a fixed shuffle), at the demo's RL sampling."""
    rl = ctx.cfg.rl
    sampling = SamplingParams(rl.temperature, 1.0, args.max_new_tokens or rl.max_new_tokens, (ctx.tokenizer.eos_id,))
    order = np.random.default_rng(args.seed).permutation(len(ctx.data.prompts))
    prompts = [ids for ids in (ctx.tokenizer.encode(ctx.data.prompts[i].prompt) for i in order)
               if 0 < len(ids) <= rl.max_prompt_len][:args.prompts]
    return [Request(f"p{i}-s{j}", ids, sampling) for i, ids in enumerate(prompts) for j in range(args.samples)]


# -- sampling and scoring ----------------------------------------------------------------------------------------------
def sample_jax(model, requests, numerics: EngineNumerics, args) -> dict:
    engine = JaxEngine(model, slots=min(64, len(requests)), max_context=args.max_context, decode_chunk=8,
                       seed=args.seed, numerics=numerics)
    try:
        return run_to_completion(engine, requests)
    finally:
        engine.close()


def sample_sglang(model, requests, args) -> tuple[dict, dict]:
    """The same requests through an SGLang server on the exported model (float32, CPU), with routing records
    (`SGLangConfig.return_routed_experts`); (outputs, server info incl. how many replies lacked a record)."""
    from engine_bench import sglang_engine  # the one launcher of SGLang on CPU for the benchmarks

    opts = types.SimpleNamespace(prompt_len=args.max_context - requests[0].sampling.max_tokens,
                                 new_tokens=requests[0].sampling.max_tokens,
                                 sglang_start_timeout=args.sglang_start_timeout)
    with sglang_engine(model, [min(64, len(requests))], opts, routed_experts=True) as (engine, info):
        outputs = run_to_completion(engine, requests)
        return outputs, {**info, "routes_missing": engine.stats["routes_missing"]}


class Scorer:
    """The trainer's float32 log-probs of sampled responses, computed as the train step computes them (packed
    micro-batches of fixed shape, `make_score_fn`), and, against the engine's routing records, the train step's
    routing sums: `diagnostics.routing_sums` of each micro-batch (its own top-k vs the record), summed."""

    def __init__(self, model, temperature: float, seq_len: int):
        self.graphdef, self.params, self.frozen = split_model(model)
        self.seq_len = seq_len
        self.score = make_score_fn(self.graphdef, temperature)

        def routing(params, frozen, batch):
            def one(mb):
                chosen = merge_model(self.graphdef, params, frozen)(
                    mb["tokens"], mb["positions"], mb["segment_ids"]).aux.chosen  # [L R S X]
                return diagnostics.routing_sums(chosen, mb["routes"], mb["loss_mask"].astype(bool))

            return {k: jnp.sum(v) for k, v in jax.lax.map(one, batch).items()}  # {key: [N]} -> totals

        self._routing = jax.jit(routing)

    def __call__(self, requests, outputs: dict) -> dict:
        responses = []
        for r in requests:
            o = outputs[r.id]
            if o.finish == "error" or not len(o.tokens):
                raise RuntimeError(f"{r.id}: {o.finish} {o.error}")
            routes = None
            if o.routes is not None and o.context_routes is not None:
                routes = np.concatenate([o.context_routes, o.routes])
            responses.append(Response(r.id, r.prompt, o.tokens, o.logprobs, 0.0, 0.0, routes=routes))
        n = sum(len(x) for x in responses)
        # one sequence per row: the number of micro-batches (one compile) is the same for every source
        mbs = pack_micro_batches(StepBatch(tuple(responses), n, 0), ROWS, self.seq_len, packed=False)
        batch = device_batch(stack_micro_batches(mbs, "token_mean", n))
        logp = np.asarray(self.score(self.params, self.frozen, batch))
        mask = np.asarray(batch["loss_mask"], bool)
        diff = (logp - np.asarray(batch["logp_infer"]))[mask]  # log pi_train - log pi_infer
        stats = mismatch_stats(diff, np.asarray(batch["logp_infer"])[mask])
        if "routes" in batch:
            sums = self._routing(self.params, self.frozen, batch)
            routing = diagnostics.finalize({k: float(v) for k, v in sums.items()})
            stats.update(routing_disagree=_sig(routing["routing_disagree"]),
                         routing_overlap=_sig(routing["routing_overlap"]), routing_tokens=int(sums["routing_tokens"]))
        else:
            stats.update(routing_disagree=None, routing_overlap=None, routing_tokens=0)
        return stats


def mismatch_stats(diff: np.ndarray, logp_infer: np.ndarray) -> dict:
    """|d| mean / p99 / max, signed mean, IcePop out-of-band fraction of d = log pi_train - log pi_infer."""
    band = LossConfig()
    a = np.abs(diff)
    out = (diff < np.log(band.alpha)) | (diff > np.log(band.beta))
    return {"tokens": int(diff.size), "logp_diff_mean": _sig(a.mean()), "logp_diff_p99": _sig(np.quantile(a, 0.99)),
            "logp_diff_max": _sig(a.max()), "logp_diff_signed_mean": _sig(diff.mean()),
            "icepop_out_frac": _sig(out.mean()), "logp_infer_mean": _sig(logp_infer.mean())}


def _sig(x) -> float:
    return float(f"{float(x):.4g}")


# -- the sources -------------------------------------------------------------------------------------------------------
def sources(args) -> list[tuple[str, EngineNumerics | None]]:
    """(name, numerics) of every source, or of those `--sources` names (in the table's order); None: SGLang."""
    out = [("fp32", EngineNumerics()), ("moe=dense", EngineNumerics(moe="dense")),
           ("bf16", EngineNumerics(dtype="bfloat16"))]
    out += [(f"fp8 block{b}", EngineNumerics(quant="fp8", fp8_block=b)) for b in _ints(args.fp8_blocks)]
    out += [(f"noise {s:g}", EngineNumerics(weight_noise=s, seed=args.seed)) for s in _floats(args.noise)]
    out += [("sglang", None)]
    if not args.sources:
        return out
    wanted = [x.strip() for x in args.sources.split(",") if x.strip()]
    names = [name for name, _ in out]
    unknown = [x for x in wanted if x not in names]
    if unknown or not wanted:
        raise ValueError(f"--sources={args.sources!r} names {unknown or 'no source'}; expected names among {names}")
    return [s for s in out if s[0] in wanted]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _sglang_missing(args) -> str | None:
    if args.skip_sglang:
        return "--skip-sglang" if not args.smoke else "--smoke (an SGLang server takes ~30 s to start)"
    try:
        import sglang  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means: not available here
        return f"import sglang failed: {type(e).__name__}: {e}"
    return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="model checkpoint step folder of a demo run (default: SFT now)")
    ap.add_argument("--sft-steps", type=int, default=150,
                    help="SFT steps of the demo recipe when no --checkpoint (0: the untrained random init)")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--samples", type=int, default=2, help="responses per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="0: the demo's rl.max_new_tokens")
    ap.add_argument("--fp8-blocks", default="128,32", help="fp8 tile sides to measure")
    ap.add_argument("--noise", default="0.01,0.03,0.1,0.3", help="weight_noise strengths to measure")
    ap.add_argument("--sources", default="", help='only these sources, comma-separated (e.g. "fp32,sglang"); '
                    "default: all")
    ap.add_argument("--skip-sglang", action="store_true")
    ap.add_argument("--sglang-start-timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs (< 60 s)")
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sft_steps, args.prompts, args.samples, args.skip_sglang = 0, 8, 1, True
        args.max_new_tokens = args.max_new_tokens or 8
        args.fp8_blocks, args.noise = "32", "0.1"
    selected = sources(args)  # a bad --sources fails here, before the SFT
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mismatch_sources_") as work:
        model, ctx, info = demo_model(args, work)
        requests = requests_of(ctx, args)
        rl = ctx.cfg.rl
        args.max_context = rl.max_prompt_len + requests[0].sampling.max_tokens
        scorer = Scorer(model, rl.temperature, args.max_context)
        env = {"jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
               "model": {"preset": ctx.cfg.model.preset, **{k: getattr(model.config, k) for k in (
                   "hidden_size", "num_hidden_layers", "num_experts", "num_experts_per_tok", "vocab_size")}},
               "prompts": len(requests) // args.samples, "samples": args.samples,
               "temperature": rl.temperature, "max_new_tokens": requests[0].sampling.max_tokens, **info}
        print(json.dumps({"env": env}), flush=True)
        rows = []
        for name, numerics in selected:
            t = time.perf_counter()
            if numerics is None:
                missing = _sglang_missing(args)
                if missing is not None:
                    row = {"source": name, "engine": "sglang", "skipped": missing}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    continue
                outputs, server = sample_sglang(model, requests, args)
                row = {"source": name, "engine": "sglang", "numerics": f"SGLang {server['sglang']}, float32, CPU",
                       "routes_missing": server["routes_missing"]}
            else:
                outputs = sample_jax(model, requests, numerics, args)
                row = {"source": name, "engine": "jax", "numerics": numerics.describe()}
            row.update(scorer(requests, outputs), seconds=round(time.perf_counter() - t, 1))
            print(json.dumps(row), flush=True)
            rows.append(row)
    keys = ("logp_diff_mean", "logp_diff_p99", "logp_diff_max", "icepop_out_frac", "routing_disagree")
    table = {r["source"]: ({k: r[k] for k in keys} if "skipped" not in r else {"skipped": r["skipped"]})
             for r in rows}
    summary = {"env": env, "sources": rows, "table": table, "seconds": round(time.perf_counter() - t0, 1)}
    return emit_summary(summary, args.out, {"table": table, "seconds": summary["seconds"]})


if __name__ == "__main__":
    main()
