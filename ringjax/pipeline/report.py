"""A PNG of a pipeline run: training reward per RL step (all stages on one axis) and held-out accuracy per domain."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from ringjax import storage
from ringjax.trainer.metrics import read_metrics


def plot_curves(path: str, stages: Sequence[tuple[str, str]], evals: Mapping[str, dict]) -> str:
    """Writes `path`. `stages`: (name, metrics log folder) in run order; `evals`: {point: {"accuracy": {domain:
    value}, "rl_step": cumulative RL step it was taken at}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for name, log_dir in stages:
        rows = read_metrics(log_dir) if storage.is_file(storage.join(log_dir, "metrics.jsonl")) else []
        rows = [r for r in rows if "reward_mean" in r]
        if rows:
            left.plot([offset + r["step"] for r in rows], [r["reward_mean"] for r in rows], label=f"stage {name}")
            offset += max(r["step"] for r in rows)
            left.axvline(offset, color="grey", lw=0.5, ls=":")
    left.set(title="training reward (mean per RL step)", xlabel="RL step", ylabel="reward")
    if offset:  # a stage logged a step (a run stopped before any has no curve to name)
        left.legend(loc="lower right")
    points = list(evals)
    domains = sorted({d for e in evals.values() for d in e["accuracy"]})
    for domain in domains:
        xs = [evals[p]["rl_step"] for p in points if domain in evals[p]["accuracy"]]
        ys = [evals[p]["accuracy"][domain] for p in points if domain in evals[p]["accuracy"]]
        right.plot(xs, ys, marker="o", label=domain)
    for p in points:
        right.annotate(f"after {p}", (evals[p]["rl_step"], 0.98), fontsize=8, ha="center", va="top")
    right.set(title="held-out accuracy (mean over samples)", xlabel="RL step", ylabel="accuracy", ylim=(0, 1))
    right.margins(x=0.1)
    if domains:
        right.legend(loc="lower right")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(path, png.getvalue())
    return path
