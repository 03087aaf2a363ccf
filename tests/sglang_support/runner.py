"""Per-token log-probs from real SGLang (CPU), run in a subprocess: the parity reference for ringjax.

`sglang_token_logprobs(model_dir, sequences)` starts ONE `sglang.Engine(device="cpu", dtype="float32")` in a fresh
python process (SGLANG_USE_CPU_ENGINE=1, the loud `sgl_kernel` stand-in beside this file on PYTHONPATH, no Ray),
scores every sequence in it, and returns for each sequence of n tokens the n-1 log-probs of tokens 1..n-1 given
their prefix, as float64 arrays. SGLang comes from scripts/install_sglang_cpu.sh; `sglang_available()` says whether
it is installed. The checkpoint folder needs `config.json` with `architectures`, `auto_map` and the configuration
module beside it (ringjax/hf/remote_code); no tokenizer files are needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from importlib import metadata

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE_MAIN = os.path.join(HERE, "_engine_main.py")
SGLANG_PINNED = "0.5.23"


def sglang_version() -> str | None:
    """The installed SGLang version (from package metadata, without importing it), or None."""
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def sglang_available() -> bool:
    """True when SGLang and torch are installed (the stand-in replaces the CUDA-only sgl_kernel)."""
    return sglang_version() is not None and all(
        importlib.util.find_spec(m) is not None for m in ("sglang", "torch", "transformers"))


def engine_env(fix_cpu_routed_scaling: bool = True) -> dict[str, str]:
    """Environment of the engine subprocess: CPU engine on, sgl_kernel stand-in first on PYTHONPATH."""
    env = dict(os.environ)
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    env["SGLANG_CPU_ROUTED_SCALING_FIX"] = "1" if fix_cpu_routed_scaling else "0"
    env["PYTHONPATH"] = os.pathsep.join([HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("XLA_FLAGS", None)  # the engine does not use JAX; keep the test suite's 8-device flag out of it
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """Ends the engine's own process group (its scheduler and detokenizer children included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_engine(model_dir: str, sequences: list[list[int]], timeout_s: float = 300,
               engine_kwargs: dict | None = None, fix_cpu_routed_scaling: bool = True) -> dict:
    """Runs _engine_main.py once; returns its result dict (log-probs as lists, plus timings and version)."""
    if not sglang_available():
        raise RuntimeError("SGLang is not installed: run scripts/install_sglang_cpu.sh")
    seqs = [[int(t) for t in s] for s in sequences]
    if any(len(s) < 2 for s in seqs):
        raise ValueError("every sequence needs at least 2 tokens")
    with tempfile.TemporaryDirectory(prefix="sglang_runner_") as tmp:
        req, res = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
        err_path = os.path.join(tmp, "stderr.txt")
        json.dump({"model_dir": os.path.abspath(model_dir), "sequences": seqs, "engine_kwargs": engine_kwargs or {}},
                  open(req, "w"))
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, ENGINE_MAIN, req, res], env=engine_env(fix_cpu_routed_scaling),
                                    cwd=tmp, stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                _kill_group(proc)
        tail = open(err_path, errors="replace").read()[-6000:]
        if rc is None:
            raise RuntimeError(f"SGLang did not finish within {timeout_s} s; output tail:\n{tail}")
        if rc != 0 or not os.path.exists(res):
            raise RuntimeError(f"SGLang failed (exit code {rc}) on {model_dir}; output tail:\n{tail}")
        return json.load(open(res))


def sglang_token_logprobs(model_dir: str, sequences: list[list[int]], timeout_s: float = 300, *,
                          fix_cpu_routed_scaling: bool = True) -> list[np.ndarray]:
    """For each sequence of n token ids, the n-1 log-probs of tokens 1..n-1 given their prefix (float64).

    `fix_cpu_routed_scaling` (default on) applies `routed_scaling_factor` to the routed experts, which SGLang
    0.5.23's CPU MoE path forgets (its CUDA path applies it); see _engine_main.py. Off: SGLang's CPU output as is.
    """
    out = run_engine(model_dir, sequences, timeout_s=timeout_s, fix_cpu_routed_scaling=fix_cpu_routed_scaling)
    return [np.asarray(lp, dtype=np.float64) for lp in out["logprobs"]]


__all__ = ["SGLANG_PINNED", "sglang_available", "sglang_token_logprobs", "sglang_version", "run_engine"]
