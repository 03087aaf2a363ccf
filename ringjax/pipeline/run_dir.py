"""The output folder of a pipeline run: who owns it (`run.json`), what is done (`state.json`), Ctrl-C handling.

`run.json` records the run's full config, every path absolute. A later run into the same folder must have the same
config (it then resumes: finished stages are skipped, the stage in progress continues from its newest checkpoint);
a different config is refused before any compute, naming the keys that differ. The run folder itself may move: a
`run.json` recording another `out` resumes in the new place and says so once (`run.json` is updated). `state.json`
is rewritten atomically after every finished stage, evaluation and pass-rate filter; the folders it names are
relative to the run folder.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

from ringjax import storage
from ringjax.config_io import build_config, to_dict
from ringjax.pipeline.config import PipelineConfig

RUN, STATE = "run.json", "state.json"


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{prefix}{i}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _with_defaults(theirs: dict) -> dict:
    """A run.json as this version reads it: a field added since it was written is absent from it and takes its
    default (a run started before a new option existed still resumes); as stored if it no longer parses. One
    exception: a run from before `eval.engine` evaluated with the embedded JAX engine in its process, `jax`."""
    if isinstance(theirs.get("eval"), dict) and "engine" not in theirs["eval"]:
        theirs = {**theirs, "eval": {**theirs["eval"], "engine": "jax"}}
    try:
        return _plain(to_dict(build_config(PipelineConfig, theirs, source=RUN)))
    except (ValueError, TypeError, FileNotFoundError):
        return theirs


def claim(cfg: PipelineConfig, overwrite: bool = False, log=print) -> bool:
    """Takes `cfg.out` for this run; True when it resumes an earlier run of the same config.

    FileExistsError when the folder holds a different run, or files that are not a ringjax run; ValueError naming
    `out` when an object-store folder cannot be written (`storage.check_writable`)."""
    out, mine = cfg.out, _plain(to_dict(cfg))
    storage.check_writable(out, "out")
    path = storage.join(out, RUN)
    if overwrite and storage.is_dir(out):
        if storage.listdir(out) and not storage.is_file(path):
            raise FileExistsError(f"--overwrite: {out} is not a ringjax run folder (no {RUN}); remove it yourself")
        storage.rmtree(out)
    if storage.is_file(path):
        theirs = _with_defaults(storage.read_json(path))
        differ = _diff({**theirs, "out": out}, mine)
        if differ:
            raise FileExistsError(f"output folder {out} holds a different run (config differs in {differ[:6]}); "
                                  f"choose another out=..., or pass --overwrite to replace it")
        if theirs.get("out") != out:
            log(f"ringjax: the run folder moved from {theirs.get('out')} to {out}; resuming here")
            storage.write_json(path, mine)
        return True
    if storage.listdir(out):
        raise FileExistsError(f"output folder {out} exists, is not empty and holds no ringjax run ({RUN})")
    storage.makedirs(out)
    storage.write_json(path, mine)  # before jax.distributed starts: every host writes the same content
    return False


def write_json(path: str, value: Any) -> None:
    """Atomic JSON write, by the first process only (every host of a multi-host run shares the run folder)."""
    import jax

    if jax.process_index() == 0:
        storage.write_json(path, value)


def read_state(out: str) -> dict:
    """{"done": {stage: result}, "evals": {point: held-out result}, "filters": {stage: pass-rate filter result}}
    (a state written before a section existed reads it as empty)."""
    path = storage.join(out, STATE)
    state = storage.read_json(path) if storage.is_file(path) else {}
    return {"done": {}, "evals": {}, "filters": {}, **state}


class GracefulStop:
    """While active, the first SIGINT (Ctrl-C) only sets `requested` (the trainers then checkpoint after the
    current step and return); a second one raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nringjax: stopping after this step to save a checkpoint (Ctrl-C again to abort without saving)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
