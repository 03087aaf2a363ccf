"""The demo's RL margin against its run-to-run noise: `ringjax train` with several seeds, held-out accuracy per stage.

    python3 benchmarks/demo_seeds.py --seeds 0,1,2 --root runs/seeds [--out FILE] [overrides ...]

Runs (or, for finished folders, reads) `ringjax train seed=S out=ROOT/seedS` for each seed; each seed draws its own
tasks, held-out split, tokenizer, initial weights, SFT order, rollouts and evaluation samples. Reports, per
evaluation point (after SFT, after each RL stage) and domain, the accuracy of every seed, their mean and sample
standard deviation (the run-to-run noise), and per seed the margin of each RL stage over SFT, with its mean and
standard deviation. Prints one JSON line per seed and a final {"summary": ...} line (also written to --out).

Per stage and seed it also reads the training reward of every RL step (`<out>/<stage>/logs/metrics.jsonl`) and
gives its trend (`reward_trend`): the first and last step, the means of the first and last 10 steps, the
least-squares slope per 100 steps with its standard error, and the step-to-step noise (std of the residuals around
that line). A step's reward is the mean over the ~55 responses (~7 prompts) of one phi-token step, so single steps
say little; the slope over the stage is what rises or not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from _summary import emit_summary
from ringjax.trainer.metrics import read_metrics


def _run(seed: int, root: str, overrides: list[str]) -> dict:
    out = os.path.join(root, f"seed{seed}")
    results = os.path.join(out, "results.json")
    if not os.path.isfile(results):
        cmd = [sys.executable, "-m", "ringjax.cli", "train", f"seed={seed}", f"out={out}", "--no-progress", *overrides]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"seed {seed} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    with open(results) as f:
        return json.load(f)


def reward_trend(rewards: list[float]) -> dict:
    """The trend of a stage's per-step training reward: endpoints, first / last 10-step means, least-squares slope
    per 100 steps with its standard error, and the residual std (the step-to-step noise)."""
    y = np.asarray(rewards, float)
    if len(y) < 3:
        raise ValueError(f"a reward trend needs at least 3 steps, got {len(y)}")
    x = np.arange(1, len(y) + 1, dtype=float)
    (slope, icept), cov = np.polyfit(x, y, 1, cov=True)
    resid = y - (slope * x + icept)
    return {"steps": len(y), "first": round(float(y[0]), 4), "last": round(float(y[-1]), 4),
            "first10": round(float(y[:10].mean()), 4), "last10": round(float(y[-10:].mean()), 4),
            "slope_per_100": round(float(slope) * 100, 4),
            "slope_se_per_100": round(float(np.sqrt(cov[0, 0])) * 100, 4),
            "step_std": round(float(resid.std(ddof=2)), 4)}


def _stage_rewards(out: str) -> dict[str, list[float]]:
    """{stage: per-step training reward} of a finished run folder (the stages with a metrics log, in run order)."""
    with open(os.path.join(out, "results.json")) as f:
        stages = json.load(f)["accuracy"]
    rewards = {}
    for stage in stages:
        log_dir = os.path.join(out, stage, "logs")
        if os.path.isfile(os.path.join(log_dir, "metrics.jsonl")):
            rows = read_metrics(log_dir)
            rewards[stage] = [r["reward_mean"] for r in sorted(rows, key=lambda r: r["step"]) if "reward_mean" in r]
    return rewards


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            "values": [round(v, 4) for v in values]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/seeds")
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*", help="config overrides passed to every run")
    args = parser.parse_args(argv)
    runs = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        runs[seed] = _run(seed, args.root, args.overrides)
        print(json.dumps({"seed": seed, "accuracy": runs[seed]["accuracy"], "seconds": runs[seed]["seconds"]}),
              flush=True)
    first = next(iter(runs.values()))["accuracy"]
    points, domains = list(first), sorted(next(iter(first.values())))
    base = points[0]

    def mean_acc(acc: dict) -> float:
        return statistics.mean(acc[d] for d in domains)

    accuracy = {p: {**{d: _stats([r["accuracy"][p][d] for r in runs.values()]) for d in domains},
                    "mean": _stats([mean_acc(r["accuracy"][p]) for r in runs.values()])} for p in points}
    margin = {p: {**{d: _stats([r["accuracy"][p][d] - r["accuracy"][base][d] for r in runs.values()])
                     for d in domains},
                  "mean": _stats([mean_acc(r["accuracy"][p]) - mean_acc(r["accuracy"][base]) for r in runs.values()])}
              for p in points[1:]}
    trends = {seed: {stage: reward_trend(r) for stage, r in _stage_rewards(os.path.join(args.root, f"seed{seed}"))
                     .items() if len(r) >= 3} for seed in runs}
    summary = {"seeds": list(runs), "accuracy": accuracy, f"margin_over_{base}": margin,
               "seconds": _stats([r["seconds"] for r in runs.values()]), "reward_trend": trends}
    return emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
