"""The demo's RL margin against its run-to-run noise: `ringjax train` with several seeds, held-out accuracy per stage.

    python3 benchmarks/demo_seeds.py --seeds 0,1,2 --root runs/seeds [--out FILE] [overrides ...]

Runs (or, for finished folders, reads) `ringjax train seed=S out=ROOT/seedS` for each seed; each seed draws its own
tasks, held-out split, tokenizer, initial weights, SFT order, rollouts and evaluation samples. Reports, per
evaluation point (after SFT, after each RL stage) and domain, the accuracy of every seed, their mean and sample
standard deviation (the run-to-run noise), and per seed the margin of each RL stage over SFT, with its mean and
standard deviation. Prints one JSON line per seed and a final {"summary": ...} line (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _summary import emit_summary


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
    summary = {"seeds": list(runs), "accuracy": accuracy, f"margin_over_{base}": margin,
               "seconds": _stats([r["seconds"] for r in runs.values()])}
    return emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
