"""Step metrics to TensorBoard (tensorboardX) and to a JSONL file beside it, from the host."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

from tensorboardX import SummaryWriter


class MetricsWriter:
    """`write(step, {name: number})` -> TensorBoard scalars under `prefix/` and one JSON line in metrics.jsonl.

    Only process 0 writes (multi-host runs call it everywhere). Non-finite values are logged as they are
    (TensorBoard shows NaN), never dropped, so a skipped update stays visible. `resumed_at`: the step a resumed
    run restored; rows of later steps (written before a crash, after the last checkpoint: those steps run again)
    are dropped from metrics.jsonl first, so every step has one row.
    """

    def __init__(self, log_dir: str, prefix: str = "train", enabled: bool = True, resumed_at: int | None = None):
        self.prefix = prefix
        self.enabled = enabled
        self.path = os.path.join(log_dir, "metrics.jsonl")
        if enabled:
            os.makedirs(log_dir, exist_ok=True)
            if resumed_at is not None and os.path.isfile(self.path):
                _drop_after(self.path, resumed_at)
            self._tb = SummaryWriter(log_dir)
            self._jsonl = open(self.path, "a")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for name, value in metrics.items():
            value = float(value)
            self._tb.add_scalar(f"{self.prefix}/{name}", value, int(step))
            row[name] = value if math.isfinite(value) else str(value)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def _drop_after(path: str, step: int) -> None:
    """Rewrites metrics.jsonl `path` (atomically) without the rows of steps after `step`."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = [line for line in lines if json.loads(line)["step"] <= step]
    if len(keep) < len(lines):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)


def read_metrics(log_dir: str) -> list[dict]:
    """The JSON lines `MetricsWriter` wrote (for tests, notebooks and checkpoint pickers)."""
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
