"""Multi-host readiness: the trainer's own code under `jax.distributed.initialize`.

Two CPU processes on localhost (2 devices each, gloo collectives) build one (fsdp 2, expert 2) mesh spanning both,
take two train steps together and must end with bit-identical parameters, equal to a single-process run of the same
steps on a 4-device mesh of the same shape. All three are `tests/multihost_worker.py` subprocesses, run at once.
Cross-process (gloo) and in-process all-reduces sum in different orders, so the two runs' losses, gradient norm and
first update (SGD, learning rate 1: minus the gradient) agree within float32 bounds (tests/numerics.py), not bits.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import ringjax
from numerics import assert_same_train_steps

WORKER = Path(__file__).with_name("multihost_worker.py")
ROOT = WORKER.parent.parent
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if "[SPMD]" not in ln and "[Gloo]" not in ln]
    return "\n".join(lines[-n:])


def _run_workers(tmp_path: Path, runs: dict[str, dict[str, str]]) -> dict[str, dict[str, np.ndarray]]:
    """Starts one worker per entry (extra env, `local_devices` among it) at once; waits; returns their npz."""
    procs = {}
    try:
        for name, extra in runs.items():
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, **extra, "PYTHONPATH": path}
            cmd = [sys.executable, str(WORKER), str(tmp_path / f"{name}.npz"),
                   "--local-devices", env.pop("local_devices")]
            log = open(tmp_path / f"{name}.log", "w")  # closed in the finally below
            procs[name] = (subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log)
        deadline = time.monotonic() + TIMEOUT_S
        pending = dict(procs)
        while pending:  # poll all: one failed worker must not leave us waiting on its stuck peer
            for name, (proc, _) in list(pending.items()):
                if proc.poll() is None:
                    continue
                del pending[name]
                if proc.returncode:
                    raise AssertionError(f"worker {name} exited with {proc.returncode}:\n"
                                         f"{_tail(tmp_path / f'{name}.log')}")
            if pending and time.monotonic() > deadline:
                name = next(iter(pending))
                raise AssertionError(f"workers {sorted(pending)} timed out after {TIMEOUT_S} s; {name}:\n"
                                     f"{_tail(tmp_path / f'{name}.log')}")
            time.sleep(0.2)
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return {name: dict(np.load(tmp_path / f"{name}.npz")) for name in runs}


def test_two_processes_train_together_and_match_one(tmp_path):
    coordinator = f"localhost:{_free_port()}"
    dist = {"RINGJAX_COORDINATOR": coordinator, "RINGJAX_NUM_PROCESSES": "2", "local_devices": "2"}
    out = _run_workers(tmp_path, {
        "p0": {**dist, "RINGJAX_PROCESS_ID": "0"},
        "p1": {**dist, "RINGJAX_PROCESS_ID": "1"},
        "ref": {"local_devices": "4"},
    })
    p0, p1, ref = out["p0"], out["p1"], out["ref"]

    for i, run in enumerate((p0, p1)):
        assert int(run["process_index"]) == i and int(run["process_count"]) == 2
        assert int(run["local_devices"]) == 2 and int(run["global_devices"]) == 4
        assert run["mesh_processes"].tolist() == [0, 1]  # the mesh spans both processes
        assert int(run["step"]) == 2
    assert int(ref["process_count"]) == 1 and int(ref["global_devices"]) == 4

    params = sorted(k for k in p0 if k.startswith("params"))
    assert params and params == sorted(k for k in p1 if k.startswith("params")) == sorted(
        k for k in ref if k.startswith("params"))
    for k in params:  # both processes hold the same global parameters, bit for bit
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    np.testing.assert_array_equal(p0["loss"], p1["loss"])

    def steps(run):
        """(metrics of each step, host parameters before the first step and after each)."""
        sums = [{k: float(run[k][i]) for k in ("loss", "grad_norm", "tokens", "icepop_masked_frac")}
                for i in range(int(run["step"]))]
        return sums, [{k[len(f"params{i}"):]: run[k].astype(np.float64) for k in params if k.startswith(f"params{i}")}
                      for i in range(int(run["step"]) + 1)]

    got, want = steps(p0), steps(ref)
    for path, x in want[1][0].items():  # the initial parameters agree, so the differences are the steps' alone
        np.testing.assert_array_equal(got[1][0][path], x, err_msg=path)
    assert max(float(np.max(np.abs(want[1][1][k] - x))) for k, x in want[1][0].items()) > 1e-2  # the step moved
    assert_same_train_steps(ringjax.preset("tiny-v2"), int(ref["seq_len"]), int(ref["positions"]),
                            float(ref["loss_weight"]), got, want)
