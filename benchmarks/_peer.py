"""Running a peer's benchmark script in the peer's own virtualenv, and reporting it as missing when it cannot run.

A peer (Tunix) lives in its own virtualenv: its script is run with that interpreter, imports nothing of ringjax and
prints JSON lines. `run_peer` returns those lines, or `{"missing": reason}` when the interpreter does not exist, the
script fails or prints no JSON: the caller still measures ringjax and prints no ratio against that peer.
"""

from __future__ import annotations

import json
import os
import subprocess

PEERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")


def run_peer(python: str, script: str, args: list[str], timeout_s: float) -> list[dict] | dict:
    """The JSON lines `python peers/<script> args...` printed, or {"missing": why}."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        return {"missing": f"peer interpreter {python!r} does not exist or is not executable"}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    cmd = [python, os.path.join(PEERS_DIR, script), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env={**env, "JAX_PLATFORMS": "cpu"})
    except subprocess.TimeoutExpired:
        return {"missing": f"{script} ran past {timeout_s:.0f} s"}
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"missing": f"{script} failed (exit {done.returncode}): {' | '.join(tail)[-600:]}"}
    return lines


def ratio(ours: float, theirs: dict | None, key: str) -> float | None:
    """ours / theirs[key], or None when the peer was not measured in this run."""
    if not theirs or "missing" in theirs or not theirs.get(key):
        return None
    return round(ours / theirs[key], 2)
