"""`ringjax train` on two hosts: two `jax.distributed` CPU processes (2 devices each, gloo collectives, one shared run
folder) run a shortened demo pipeline end to end: SFT, the entropy pick, RL stage `math` with rollouts on the
trainer's mesh (the embedded engine: `rollout.workers: 0`, as on a TPU pod), RL stage `code` with rollouts in a Ray
worker (as on a GPU cluster: process 0 drives it, both processes send it their shards of every update and train on
the step process 0 packed), evaluations, checkpoints and the export. One process is killed (SIGKILL) during the
second RL stage; the other is killed too, as a job scheduler restarts a job whose process died, and the same command
resumes both.

Against one process with the same 4 devices (`ringjax sft`, run alongside): the first two SFT steps, which train
from the same parameters (the learning rate warms up from 0), have the same loss, entropy and gradient norm within
float32 bounds (gloo and in-process all-reduces sum in different orders; tests/numerics.py). Later steps are not
compared: AdamW turns rounding-level gradient differences into learning-rate-sized updates.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from numerics import EPS32, forward_chain, grad_chain

SHORT = ["data.synthetic.math=40", "data.synthetic.code=20", "data.synthetic.sft_per_domain=32",
         "data.synthetic.eval_per_domain=4", "sft.train.steps=4", "sft.train.optim.total_steps=4",
         "sft.train.optim.warmup_steps=1", "sft.train.checkpoint_every=2", "sft.train.batch_size=8", "sft.train.rows=8",
         "sft.band_miss=closest", "stages.0.steps=2", "stages.1.steps=2", "rl.checkpoint_every=1", "eval.samples=1",
         "rl.rollout.workers=0", "stages.1.rl.rollout.workers=1", "mesh.cpu_devices=2", "mesh.distributed=true",
         "--no-progress"]
TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(work, name, argv, extra):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # each process: mesh.cpu_devices devices
    log = open(os.path.join(work, f"{name}.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "ringjax.cli", *argv], cwd=work, env={**env, **extra},
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def _tail(work, name, n=30):
    with open(os.path.join(work, f"{name}.log"), errors="replace") as f:
        lines = [ln for ln in f.read().splitlines() if "[Gloo]" not in ln]
    return "\n".join(lines[-n:])


def _metrics(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _two_processes(work, tag):
    dist = {"RINGJAX_COORDINATOR": f"localhost:{_free_port()}", "RINGJAX_NUM_PROCESSES": "2"}
    return [_start(work, f"{tag}{i}", ["train", "out=run", *SHORT], {**dist, "RINGJAX_PROCESS_ID": str(i)})
            for i in range(2)]


def _wait(work, procs, names, deadline):
    for (proc, log), name in zip(procs, names):
        try:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{_tail(work, name)}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("multihost_pipeline"))
    deadline = time.monotonic() + TIMEOUT_S
    ref = _start(work, "ref", ["sft", "out=ref", *SHORT[:-4], "mesh.cpu_devices=4", "--no-progress"], {})
    first = _two_processes(work, "first")
    code_log = os.path.join(work, "run", "code", "logs", "metrics.jsonl")
    try:
        while not _metrics(code_log):
            dead = [i for i, (p, _) in enumerate(first) if p.poll() is not None]
            if dead:
                raise AssertionError(f"process {dead[0]} ended before stage code logged a step:\n"
                                     f"{_tail(work, f'first{dead[0]}')}")
            assert time.monotonic() < deadline, "stage code did not log a step in time"
            time.sleep(0.2)
        first[1][0].send_signal(signal.SIGKILL)  # one host dies mid-stage
        try:
            first[0][0].wait(timeout=60)  # the survivor fails on its next collective, or is stopped by its scheduler
        except subprocess.TimeoutExpired:
            first[0][0].kill()
    finally:
        for proc, log in first:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.close()
    killed_at = [m["step"] for m in _metrics(code_log)]
    second = _two_processes(work, "second")
    _wait(work, second, ["second0", "second1"], deadline)
    _wait(work, [ref], ["ref"], deadline)
    return {"work": work, "out": os.path.join(work, "run"), "killed_at": killed_at}


def test_the_killed_run_resumes_and_finishes_every_stage(run):
    out = run["out"]
    assert run["killed_at"] and run["killed_at"][-1] < 2
    log = _tail(run["work"], "second0", 200)
    assert "resuming run" in log and "exported the final model" in log
    state = json.load(open(os.path.join(out, "state.json")))
    assert set(state["done"]) == {"sft", "math", "code"}
    assert state["done"]["sft"]["step"] == 4 and state["done"]["code"]["step"] == 2
    # every step logged once, by process 0 only, whatever ran twice after the last checkpoint
    for stage, steps in (("sft", [1, 2, 3, 4]), ("math", [1, 2]), ("code", [1, 2])):
        assert [m["step"] for m in _metrics(os.path.join(out, stage, "logs", "metrics.jsonl"))] == steps, stage
        assert "2" in os.listdir(os.path.join(out, stage, "checkpoints"))
    results = json.load(open(os.path.join(out, "results.json")))
    assert list(results["accuracy"]) == ["sft", "math", "code"] and results["devices"] == 4
    assert os.path.isfile(os.path.join(out, "hf", "config.json"))
    assert any(f.endswith(".safetensors") for f in os.listdir(os.path.join(out, "hf")))


def test_both_processes_report_the_same_run(run):
    """Each host prints its own console; both end with the same summary (the rollouts run in lockstep on the
    shared mesh, or process 0 shares the step it packed from the Ray worker's, so both processes saw the same rewards
    and accuracies), and neither shows a warning of JAX or Ray (process 0 starts Ray before JAX's threads)."""
    summaries = []
    for name in ("second0", "second1"):
        log = _tail(run["work"], name, 400)
        summaries.append(json.loads(log[log.rindex("\n{\n") + 1:]))
    for s in summaries:
        s.pop("seconds"), s.pop("plot")  # wall time; the plot is drawn by process 0 only
    assert summaries[0] == summaries[1]
    for name in ("first0", "first1", "second0", "second1"):
        log = _tail(run["work"], name, 10000)
        assert "Warning" not in log and "WARNING" not in log, f"{name}:\n{log}"


def test_the_first_sft_steps_match_one_process(run):
    from ringjax.pipeline.config import load_pipeline
    from ringjax.plan import model_config

    cfg = model_config(load_pipeline(None, [a for a in SHORT if "=" in a]))
    seq_len = load_pipeline(None, [a for a in SHORT if "=" in a]).sft.train.seq_len
    two = _metrics(os.path.join(run["out"], "sft", "logs", "metrics.jsonl"))
    one = _metrics(os.path.join(run["work"], "ref", "sft", "logs", "metrics.jsonl"))
    assert two[0]["lr"] == one[0]["lr"] == 0.0  # step 2 trains from the same parameters as step 1
    forward = forward_chain(cfg, seq_len) * EPS32
    gradient = grad_chain(cfg, seq_len, int(two[0]["tokens"])) * EPS32
    for a, b in zip(two[:2], one[:2]):
        assert a["tokens"] == b["tokens"] and a["examples"] == b["examples"]
        for key in ("loss", "nll_mean", "entropy_mean"):
            np.testing.assert_allclose(a[key], b[key], rtol=forward, atol=0, err_msg=key)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=gradient, atol=0)


def test_rollouts_a_multi_process_trainer_cannot_drive_are_refused():
    """SGLang servers outside Ray workers take weights from one process, and deltas need the whole previous weights
    on one host: with a trainer of several processes both are refused, naming the stage's setting (no process starts
    Ray or computes). Ray workers, of the JAX engine or SGLang, are accepted."""
    from ringjax.pipeline.config import load_pipeline
    from ringjax.pipeline.run import check_rollouts_on_mesh

    with pytest.raises(ValueError, match=r"stages\.math\.rl\.rollout: engine='sglang', workers=0 with a trainer of 2 "
                                         r"processes"):
        check_rollouts_on_mesh(load_pipeline(None, ["rl.rollout.workers=0", "rl.rollout.engine=sglang"]), 2)
    with pytest.raises(ValueError, match=r"stages\.code\.rl\.rollout: weight_delta=true"):
        check_rollouts_on_mesh(load_pipeline(None, ["stages.1.rl.rollout.weight_delta=true"]), 2)
    check_rollouts_on_mesh(load_pipeline(None, ["rl.rollout.weight_delta=true"]), 1)
    for ok in ([], ["rl.rollout.workers=0"], ["rl.rollout.engine=sglang"]):
        check_rollouts_on_mesh(load_pipeline(None, ok), 2)
