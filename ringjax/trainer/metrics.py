"""Step metrics to TensorBoard (tensorboardX) and to a JSONL file beside it, from the host.

On a Cloud Storage run folder (`ringjax.storage`), which has no append, both files are rewritten whole after every
row: metrics.jsonl from the rows held in memory (a row is a few hundred bytes), the TensorBoard event file from a
local temporary folder that tensorboardX writes into (its own Cloud Storage writer uploads again when garbage
collected, so a finished writer could still be touching the store at exit)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping

from tensorboardX import SummaryWriter

from ringjax import storage


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
        self.path = storage.join(log_dir, "metrics.jsonl")
        self.log_dir = log_dir
        self._rows: list[str] | None = None  # an object store's whole file, rewritten after each row
        self._staging: str | None = None  # the local folder of the event file, for an object store
        if enabled:
            storage.makedirs(log_dir)
            exists = storage.is_file(self.path)
            kept = _drop_after(self.path, resumed_at) if exists and resumed_at is not None else None
            if storage.is_url(self.path):
                self._rows = kept if kept is not None else _lines(self.path) if exists else []
                self._staging = tempfile.mkdtemp(prefix="ringjax_tb_")
            else:
                self._jsonl = open(self.path, "a")
            self._tb = SummaryWriter(self._staging or log_dir)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for name, value in metrics.items():
            value = float(value)
            self._tb.add_scalar(f"{self.prefix}/{name}", value, int(step))
            row[name] = value if math.isfinite(value) else str(value)
        if self._rows is None:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        else:
            self._rows.append(json.dumps(row) + "\n")
            storage.write_bytes(self.path, "".join(self._rows).encode())
            self._upload_events()

    def _upload_events(self) -> None:
        self._tb.flush()
        for name in os.listdir(self._staging):
            with open(os.path.join(self._staging, name), "rb") as f:
                storage.write_bytes(storage.join(self.log_dir, name), f.read())

    def close(self) -> None:
        if self.enabled:
            if self._rows is None:
                self._jsonl.close()
            else:
                self._upload_events()
            self._tb.close()
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)


def _lines(path: str) -> list[str]:
    return [line + "\n" for line in storage.read_text(path).splitlines() if line.strip()]


def _drop_after(path: str, step: int) -> list[str]:
    """Rewrites metrics.jsonl `path` (atomically) without the rows of steps after `step`; the rows kept."""
    lines = _lines(path)
    keep = [line for line in lines if json.loads(line)["step"] <= step]
    if len(keep) < len(lines):
        storage.write_bytes(path, "".join(keep).encode())
    return keep


def read_metrics(log_dir: str) -> list[dict]:
    """The JSON lines `MetricsWriter` wrote (for tests, notebooks and checkpoint pickers)."""
    return [json.loads(line) for line in _lines(storage.join(log_dir, "metrics.jsonl"))]
