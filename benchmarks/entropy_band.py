"""Ring-lite's entropy-band pick, tested: is the SFT checkpoint whose held-out token entropy lies in a band the
better RL start than the lowest-loss or the last one?

    PYTHONPATH=. python3 benchmarks/entropy_band.py [--seeds 0,1,2] [--picks band,band_demo,lowest_loss,last,early]
        [--grid 8] [--sft-steps 500] [--checkpoint-every 25] [--rl-steps 60] [--eval-points 3] [--eval-samples 4]
        [--seed 0] [--root runs/entropy_band] [--smoke] [--out FILE]

Ring-lite starts RL from the SFT checkpoint whose held-out token entropy lies in 0.3-0.5 (lower collapses RL
earlier, higher converges slowly); the demo (ringjax/pipeline/demo.yaml) moved its band to [0.1, 0.3] because the
teacher's slips put a floor of ~0.1 under the entropy of its short traces. This finds where the band sits here.

1. One SFT run of the demo's recipe (math only, seed --seed, --sft-steps steps of its cosine schedule), through
   `ringjax.pipeline.stages` (setup, sft), with a checkpoint every --checkpoint-every steps. Each checkpoint
   records its held-out token entropy and NLL (`train_sft`'s checkpoint evaluation, the numbers the pipeline's
   pick reads); each gets its held-out math accuracy here (`mismatch_ablation.heldout`: the demo's held-out
   prompts, --eval-samples samples each, temperature 1).
2. Picks (`PICKS`): `band` (the pipeline's rule, `stages.pick`, with Ring-lite's [0.3, 0.5]: the latest checkpoint
   in the band, else the closest, flagged `in_band: false`), `band_demo` (the same rule with the demo's
   [0.1, 0.3]), `lowest_loss` (the lowest held-out NLL), `last`, `early` (the first checkpoint). --grid N adds N
   checkpoints spread evenly in log entropy over the run, so the entropy-vs-outcome curve has more points.
   Several picks may name one checkpoint: RL runs once per distinct checkpoint (a "start").
3. From every start and for every seed of --seeds: `train_rl` for --rl-steps steps of the demo's RL section (phi
   1024 tokens, 8 prompts x 8 samples, C3PO++, IcePop, lr 1e-4; the embedded engine in-process; the seed sets
   prompt order and sampling), held-out math accuracy at --eval-points checkpoints.

Summary: per pick and per start, the checkpoint's step, entropy, loss, start accuracy, final accuracy and gain
(mean ± std over seeds); the Spearman and Pearson correlation of start entropy with final accuracy and with the
gain across starts, and of entropy with start accuracy across all checkpoints (scipy, else numpy ranks, no p);
the start with the best final accuracy. Prints one JSON line per RL run and a final {"summary": ...} line; --out
gets everything (per-checkpoint records, per-step RL metrics); notebooks/entropy_band.ipynb plots that file.

Each RL run lives in ROOT/rl/stepS_seedK and the SFT run in ROOT/sft; folders holding checkpoints are resumed, so
a run of another SFT size needs its own --root.

Cost on 2 CPU cores, estimated from timed short runs of these components (the demo's 500-step SFT ~80 s; an RL
step ~0.6-0.8 s, ~15-30 s of compiling per run, more from a high-entropy start whose responses run to the
length cap; a held-out evaluation ~2-4 s): SFT with 20 checkpoints and their evaluations ~3 min, one 60-step RL
run with 3 evaluations ~1.2 min. The picks name ~3-4 distinct checkpoints (`band_demo`, `lowest_loss` and `last`
tend to coincide at the end of the run) and --grid 8 adds ~5, so the defaults make ~9 starts x 3 seeds = ~27 RL
runs: ~35-40 min in all; each further start adds ~4 min. Measured on an idle 2-core machine: the defaults named 7
distinct starts (21 RL runs), 21 minutes in all.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

from _lab import SMOKE_RL, checkpoint_accuracy, heldout, lab_rl_config, log, train_math
from _lab import mean_std as _mean_std
from _lab import short as _short
from _summary import emit_summary
from mismatch_sources import MATH_ONLY
from ringjax.pipeline import stages
from ringjax.pipeline.config import load_pipeline
from ringjax.trainer.metrics import read_metrics
from ringjax.trainer.model_checkpoint import restore_model
from ringjax.trainer.rl import RLConfig
from ringjax.trainer.sft import ENTROPY_BAND, eval_entropies

BANDS = {"band": tuple(ENTROPY_BAND), "band_demo": (0.1, 0.3)}  # Ring-lite's band; the demo's (demo.yaml)
PICKS = ("band", "band_demo", "lowest_loss", "last", "early")
KEPT = ("reward_mean", "grad_norm", "entropy_mean", "response_len_mean", "correction_zero_frac")


# -- SFT and its checkpoints -------------------------------------------------------------------------------------------
def sft_run(args, work: str):
    """(pipeline context, SFT run folder, seconds): the demo's SFT recipe, math only, a checkpoint every
    --checkpoint-every steps (all kept); resumed when `work` holds one."""
    n, every = args.sft_steps, args.checkpoint_every
    overrides = [f"out={work}", f"seed={args.seed}", *MATH_ONLY, f"sft.train.steps={n}",
                 f"sft.train.optim.total_steps={n}", f"sft.train.optim.warmup_steps={min(10, n - 1)}",
                 f"sft.train.checkpoint_every={every}", f"sft.train.keep_checkpoints={n // every + 1}"]
    if args.smoke:
        overrides += ["data.synthetic.math=60", "data.synthetic.sft_per_domain=64", "data.synthetic.eval_per_domain=8"]
    cfg = load_pipeline(None, overrides)
    ctx = stages.setup(cfg, log, rl=False)
    t0 = time.perf_counter()
    stages.sft(ctx, ctx.initial_model(), None, None)
    return ctx, os.path.join(cfg.out, "sft"), round(time.perf_counter() - t0, 1)


def checkpoints(ctx, run_dir: str, args) -> list[dict]:
    """[{step, entropy, loss, accuracy}] of every SFT checkpoint: held-out token entropy as the pick reads it
    (`eval_entropies`), held-out NLL from the same evaluation (the eval log), held-out math accuracy."""
    nll = {int(r["step"]): float(r["nll"]) for r in read_metrics(os.path.join(run_dir, "logs", "eval")) if "nll" in r}
    out = []
    for step, entropy in sorted(eval_entropies(run_dir).items()):
        if entropy is None or step not in nll:
            raise ValueError(f"{run_dir}: checkpoint {step} recorded no held-out evaluation")
        model = restore_model(os.path.join(run_dir, "checkpoints", str(step)))
        out.append({"step": step, "entropy": entropy, "loss": nll[step],  # as the picks compare them
                    "accuracy": heldout(model, ctx, args)})
        log(f"entropy_band: SFT checkpoint {out[-1]}")
    return out


# -- picks -------------------------------------------------------------------------------------------------------------
def pick_all(ckpts: list[dict], run_dir: str, names: list[str]) -> dict:
    """{pick: {step, entropy, ...}}: which checkpoint each rule names."""
    by_step = {c["step"]: c for c in ckpts}
    out = {}
    for name in names:
        if name in BANDS:
            step, _, inside = stages.pick(run_dir, BANDS[name], "closest")
            out[name] = {"step": step, "band": list(BANDS[name]), "in_band": inside}
        elif name == "lowest_loss":
            out[name] = {"step": min(by_step, key=lambda s: by_step[s]["loss"])}
        elif name == "last":
            out[name] = {"step": max(by_step)}
        elif name == "early":
            out[name] = {"step": min(by_step)}
        else:
            raise ValueError(f"--picks: unknown pick {name!r}; known: {list(PICKS)}")
        out[name]["entropy"] = by_step[out[name]["step"]]["entropy"]
    return out


def grid_steps(ckpts: list[dict], n: int) -> list[int]:
    """Up to `n` checkpoint steps whose entropies lie closest to `n` points spread evenly in log entropy over the
    run's range (distinct, ascending)."""
    if n <= 0:
        return []
    logs = np.log([max(c["entropy"], 1e-9) for c in ckpts])
    targets = np.linspace(logs.min(), logs.max(), n)
    return sorted({ckpts[int(np.argmin(np.abs(logs - t)))]["step"] for t in targets})


# -- RL from one start -------------------------------------------------------------------------------------------------
def rl_config(ctx, seed: int, args, every: int) -> RLConfig:
    """The demo's RL section (math only), in-process engine, checkpoints kept for the held-out evaluations."""
    return lab_rl_config(ctx, args.rl_steps, seed, every, SMOKE_RL if args.smoke else [], "entropy_band rl")


def run_rl(ctx, sft_dir: str, step: int, seed: int, args) -> dict:
    """RL from SFT checkpoint `step`: {start_step, seed, rl_s, accuracy {rl step: held-out}, history}."""
    every = max(1, args.rl_steps // args.eval_points)
    run_dir = os.path.join(args.root, "rl", f"step{step}_seed{seed}")
    model = restore_model(os.path.join(sft_dir, "checkpoints", str(step)))
    _, seconds = train_math(model, ctx, rl_config(ctx, seed, args, every), run_dir)
    accuracy = {str(s): a for s, a in checkpoint_accuracy(ctx, run_dir, args).items()}
    rows = {int(r["step"]): r for r in read_metrics(os.path.join(run_dir, "logs"))}  # a resumed run: the last row
    history = [{k: _short(rows[s].get(k)) for k in KEPT} | {"step": s} for s in sorted(rows)]
    return {"start_step": step, "seed": seed, "rl_s": round(seconds, 1), "accuracy": accuracy, "history": history}


# -- summary -----------------------------------------------------------------------------------------------------------
def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank (as scipy.stats.rankdata, minus 1)."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def correlation(x, y, use_scipy: bool = True) -> dict | None:
    """{n, spearman, pearson (+ their p-values with scipy)} of paired values; None for fewer than 3 pairs or a
    constant side."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    stats = None
    if use_scipy:
        try:
            from scipy import stats
        except ImportError:
            pass
    if stats is None:
        pearson = float(np.corrcoef(x, y)[0, 1])
        spearman = float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])
        return {"n": len(x), "spearman": round(spearman, 4), "pearson": round(pearson, 4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s, p = stats.spearmanr(x, y), stats.pearsonr(x, y)
    return {"n": len(x), "spearman": round(float(s.statistic), 4), "spearman_p": _short(float(s.pvalue)),
            "pearson": round(float(p.statistic), 4), "pearson_p": _short(float(p.pvalue))}


def summarize(ckpts: list[dict], picks: dict, grid: list[int], runs: list[dict]) -> dict:
    """Per start (distinct RL start checkpoint) and per pick: step, entropy, loss, start accuracy, final accuracy
    and gain over seeds; the correlations of entropy with outcome; the start with the best final accuracy."""
    by_step = {c["step"]: c for c in ckpts}
    starts = []
    for step in sorted({r["start_step"] for r in runs}):
        c, mine = by_step[step], [r for r in runs if r["start_step"] == step]
        final = [list(r["accuracy"].values())[-1] for r in mine]
        gain = [f - c["accuracy"] for f in final]
        named = [name for name, p in picks.items() if p["step"] == step] + ["grid"] * (step in grid)
        starts.append({"step": step, "entropy": c["entropy"], "loss": c["loss"], "start_accuracy": c["accuracy"],
                       "final_accuracy": _mean_std(final), "accuracy_gain": _mean_std(gain), "picked_by": named})
    by_start = {s["step"]: s for s in starts}
    rows = {name: {**p, **{k: by_start[p["step"]][k] for k in ("loss", "start_accuracy", "final_accuracy",
                                                                   "accuracy_gain")}}
            for name, p in picks.items()}
    entropy = [s["entropy"] for s in starts]
    best = max(starts, key=lambda s: s["final_accuracy"]["mean"]) if starts else None
    return {"picks": rows, "starts": starts,
            "correlation": {
                "entropy_vs_final_accuracy": correlation(entropy, [s["final_accuracy"]["mean"] for s in starts]),
                "entropy_vs_accuracy_gain": correlation(entropy, [s["accuracy_gain"]["mean"] for s in starts]),
                "entropy_vs_start_accuracy_all": correlation([c["entropy"] for c in ckpts],
                                                             [c["accuracy"] for c in ckpts])},
            "best_start": None if best is None else {k: best[k] for k in ("step", "entropy", "final_accuracy")}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="RL seeds (prompt order, sampling) of every start")
    parser.add_argument("--picks", default=",".join(PICKS), help=f"checkpoint picks among {list(PICKS)}")
    parser.add_argument("--grid", type=int, default=8, help="extra starts spread evenly in log entropy")
    parser.add_argument("--sft-steps", type=int, default=500, help="SFT steps of the demo's recipe (its own: 500)")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="SFT checkpoint (candidate) interval")
    parser.add_argument("--rl-steps", type=int, default=60)
    parser.add_argument("--eval-points", type=int, default=3, help="held-out evaluations per RL run (checkpoints)")
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the SFT run and its data")
    parser.add_argument("--root", default="runs/entropy_band")
    parser.add_argument("--smoke", action="store_true", help="tiny SFT, 2 RL steps, 1 eval sample: mechanics only")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    names = [p for p in args.picks.split(",") if p]
    unknown = [p for p in names if p not in PICKS]
    if unknown or not names:
        parser.error(f"--picks: unknown {unknown or 'none given'}; known: {list(PICKS)}")
    if args.smoke:
        args.sft_steps, args.checkpoint_every, args.rl_steps, args.eval_points, args.eval_samples = 20, 5, 2, 1, 1
    for name in ("sft_steps", "checkpoint_every", "rl_steps", "eval_points", "eval_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.root = os.path.abspath(args.root)
    os.makedirs(args.root, exist_ok=True)
    t0 = time.perf_counter()
    ctx, sft_dir, sft_s = sft_run(args, os.path.join(args.root, "sft"))
    t1 = time.perf_counter()
    ckpts = checkpoints(ctx, sft_dir, args)
    picks = pick_all(ckpts, sft_dir, names)
    grid = grid_steps(ckpts, args.grid)
    starts = sorted({p["step"] for p in picks.values()} | set(grid))
    log(f"entropy_band: picks {picks}, grid {grid}; RL from steps {starts} x seeds {seeds}")
    eval_s = round(time.perf_counter() - t1, 1)
    runs = []
    for seed in seeds:
        for step in starts:
            run = run_rl(ctx, sft_dir, step, seed, args)
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("start_step", "seed", "rl_s", "accuracy")}), flush=True)
    config = {k: getattr(args, k) for k in ("seed", "sft_steps", "checkpoint_every", "rl_steps", "eval_points",
                                            "eval_samples", "grid")} | {"seeds": seeds, "bands": BANDS}
    summary = {"config": config, "sft": {"sft_s": sft_s, "checkpoint_eval_s": eval_s}, "grid": grid,
               **summarize(ckpts, picks, grid, runs), "seconds": round(time.perf_counter() - t0, 1)}
    full = {**summary, "checkpoints": ckpts, "runs": runs}
    emit_summary(full, args.out, shown={k: summary[k] for k in ("picks", "correlation", "best_start", "seconds")})
    return full


if __name__ == "__main__":
    main()
