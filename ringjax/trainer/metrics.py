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
    (TensorBoard shows NaN), never dropped, so a skipped update stays visible.
    """

    def __init__(self, log_dir: str, prefix: str = "train", enabled: bool = True):
        self.prefix = prefix
        self.enabled = enabled
        self.path = os.path.join(log_dir, "metrics.jsonl")
        if enabled:
            os.makedirs(log_dir, exist_ok=True)
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


def read_metrics(log_dir: str) -> list[dict]:
    """The JSON lines `MetricsWriter` wrote (for tests, notebooks and checkpoint pickers)."""
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
