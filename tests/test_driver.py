"""`ringjax.trainer.driver.Driver` between two real `jax.distributed` CPU processes (tests/driver_process.py): a
result larger than one key-value piece reaches the follower whole, a failure of the leader's function reaches the
follower as `LeaderFailed` with the leader's error, a follower whose leader sends nothing times out naming itself
and what it waited for, and none of this starts JAX's backends (process 0 may still start Ray, a fork, after it).
The weight-update half of the protocol runs in tests/test_multihost_pipeline.py (stage `code`)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("driver_process.py")
ROOT = SCRIPT.parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_results_failures_and_deadlines_cross_between_two_processes(tmp_path):
    env = {**os.environ, "RINGJAX_COORDINATOR": f"localhost:{_free_port()}", "RINGJAX_NUM_PROCESSES": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / f"{i}.json")], cwd=ROOT,
                              env={**env, "RINGJAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for i, p in enumerate(procs):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
    leader, follower = (json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2))
    assert (leader["index"], follower["index"], leader["count"]) == (0, 1, 2)
    assert leader["big_ok"] and follower["big_ok"]
    assert leader["failure"] == "ValueError: the leader's rollout broke"
    assert follower["failure"] == "LeaderFailed: process 0 failed: ValueError: the leader's rollout broke"
    assert follower["timeout"].startswith("process 1: no message 0 of the leader's 'quiet-1' loop")
    assert "within 2 s" in follower["timeout"]
    assert not leader["jax_backends_started"] and not follower["jax_backends_started"]
