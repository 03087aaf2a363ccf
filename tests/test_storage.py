"""Run folders in Cloud Storage (`out=gs://bucket/prefix`), against a local stand-in for the store: the
gcp-storage-emulator server (tests/gcs_emulator.py), which speaks Cloud Storage's JSON API. gcsfs (epath's backend)
and tensorstore (Orbax's array writer) both reach it through their documented endpoint variables. A shortened
`ringjax train` runs into the bucket, is killed (SIGKILL) after its RL stage's first checkpoint and is resumed by
the same command; nothing of the run touches the local disk of the working folder."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import foreign_lines
from ringjax import storage

BUCKET = "ringjax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """An emulator with bucket BUCKET; this process and the runs it starts use it (environment variables)."""
    port = _free_port()
    emulator = os.path.join(os.path.dirname(__file__), "gcs_emulator.py")
    server = subprocess.Popen([sys.executable, emulator, str(port), BUCKET], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    # The emulator takes no credentials: gcsfs and tensorstore are told so rather than looking for Google's. It
    # serves the JSON API only, not the gRPC control API that gcsfs asks for a bucket's layout (its experimental
    # zonal / hierarchical-namespace support, retried for minutes when refused), so that lookup is off here.
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
           "GOOGLE_CLOUD_PROJECT": "test", "FSSPEC_GCS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "the storage emulator did not start"
            time.sleep(0.2)
    import fsspec.config

    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})  # fsspec read its environment when imported
        yield env
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.parametrize("typed, culprit", [
    ("s3://bucket/run", "not a supported location"),
    ("gs://Not_A_Bucket/run", "not a supported location"),
    ("ftp://host/run", "not a supported location"),
])
def test_only_cloud_storage_urls_are_run_folders(typed, culprit):
    with pytest.raises(ValueError, match=f"out={typed!r}: {culprit}"):
        storage.resolve(typed, "out")
    assert storage.resolve("gs://bucket/run/", "out") == "gs://bucket/run"
    assert storage.resolve("run", "out") == os.path.abspath("run")


def test_a_bucket_that_cannot_be_written_fails_naming_out_before_any_compute(gcs, tmp_path, capsys, monkeypatch):
    from ringjax.cli import main

    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    assert main(["train", "out=gs://no-such-bucket/run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "out='gs://no-such-bucket/run': cannot write to this Cloud Storage folder" in err, err
    assert "credentials" in err and time.monotonic() - t0 < 60
    assert not os.listdir(tmp_path)


def test_metrics_rows_survive_a_resume_in_the_store(gcs):
    from ringjax.trainer.metrics import MetricsWriter, read_metrics

    logs = f"gs://{BUCKET}/metrics-test/logs"
    writer = MetricsWriter(logs)
    for step in (1, 2, 3):
        writer.write(step, {"loss": 1.0 / step, "skipped": float("nan")})
    writer.close()
    assert [r["step"] for r in read_metrics(logs)] == [1, 2, 3]
    writer = MetricsWriter(logs, resumed_at=2)  # steps after the restored checkpoint run again
    writer.write(3, {"loss": 0.25})
    writer.close()
    rows = read_metrics(logs)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["loss"] == 0.25 and rows[0]["skipped"] == "nan"
    assert any(n.startswith("events.out.tfevents") for n in storage.listdir(logs)), "TensorBoard events uploaded"


def test_checkpoints_round_trip_and_an_unfinished_step_is_not_listed(gcs):
    import jax.numpy as jnp

    from ringjax.trainer.checkpoint import Checkpointer, checkpoint_steps

    folder = f"gs://{BUCKET}/ckpt-test"
    tree = {"w": jnp.arange(12.0).reshape(3, 4), "step": jnp.int32(5)}
    ckpt = Checkpointer(folder, every=1, keep=2, meta={"model": "x"})
    for step in (1, 2, 3):
        ckpt.save(step, {"w": tree["w"] * step, "step": tree["step"]}, extras={"data": {"cursor": step}})
    ckpt.wait()
    ckpt.close()
    # a save that died before Orbax's commit marker: its objects are there, the step is not finished
    storage.write_bytes(f"{folder}/9/state/_METADATA", b"{}")
    assert checkpoint_steps(folder) == [2, 3]
    again = Checkpointer(folder, every=1, keep=2, meta={"model": "x"})
    state, extras, step = again.restore(tree)
    again.close()
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(tree["w"]) * 3)
    assert step == 3 and extras["data"] == {"cursor": 3}


# The embedded demo, cut to a few steps: SFT 6 steps, then the math stage for 4 RL steps, one Ray rollout worker.
# Checkpoints far enough apart that a save into the (slow, single-threaded) emulator ends before the next one starts:
# Orbax warns when a save waits more than a second for the previous one.
TINY = ["data.synthetic.math=64", "data.synthetic.code=32", "data.synthetic.sft_per_domain=48",
        "data.synthetic.eval_per_domain=4", "sft.train.steps=6", "sft.train.optim.total_steps=6",
        "sft.train.optim.warmup_steps=1", "sft.train.checkpoint_every=6", "sft.train.batch_size=8",
        "sft.train.rows=8", "stages.0.steps=4", "stages.1.enabled=false", "rl.checkpoint_every=2",
        "rl.prompts_per_batch=4", "rl.samples_per_prompt=4", "eval.samples=1"]


def _train(out, cwd, env, **kw):
    cmd = [sys.executable, "-m", "ringjax.cli", "train", f"out={out}", *TINY, "--no-progress"]
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **env}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture(scope="module")
def bucket_run(gcs, tmp_path_factory):
    """`ringjax train out=gs://...`, SIGKILLed once the math stage has a checkpoint, then the same command again."""
    from ringjax.trainer.checkpoint import checkpoint_steps

    work = str(tmp_path_factory.mktemp("bucket_run"))
    out = f"gs://{BUCKET}/runs/demo"
    first = _train(out, work, gcs)
    deadline = time.monotonic() + 900
    while not checkpoint_steps(f"{out}/math/checkpoints"):
        assert first.poll() is None, f"the run ended before stage math saved a checkpoint:\n{first.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint of stage math within 900 s"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    killed_at = checkpoint_steps(f"{out}/math/checkpoints")[-1]
    before = _rows(f"{out}/math/logs")
    second = _train(out, work, gcs)
    log = second.communicate(timeout=900)[0]
    return {"out": out, "work": work, "killed_at": killed_at, "rows_before": before, "rc": second.returncode,
            "log": log}


def _rows(log_dir):
    from ringjax.trainer.metrics import read_metrics

    return {r["step"]: r for r in read_metrics(log_dir)}


def test_a_killed_run_resumes_from_the_bucket_and_finishes(bucket_run):
    out, log = bucket_run["out"], bucket_run["log"]
    assert bucket_run["rc"] == 0, log[-3000:]
    # tensorstore's C++ logs one line when it picks the store's credentials (here the emulator's test token);
    # Python cannot quiet it. Nothing else but ringjax's own lines.
    foreign = [line for line in foreign_lines(log) if "google_auth_provider.cc" not in line]
    assert "resuming run" in log and foreign == [], log[-3000:]
    state = storage.read_json(f"{out}/state.json")
    assert set(state["done"]) == {"sft", "math"}
    assert state["done"]["math"]["final_dir"] == "math/checkpoints/4"
    # every RL step has one metrics row, though the steps after the restored checkpoint ran twice; the rows up to
    # that checkpoint are the killed run's (timings included): the stage went on from it, it did not start over
    rows = [json.loads(line) for line in storage.read_text(f"{out}/math/logs/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    killed_at = bucket_run["killed_at"]
    assert killed_at == 2 and all(rows[s - 1] == bucket_run["rows_before"][s] for s in range(1, killed_at + 1))
    assert storage.is_file(f"{out}/results.json") and storage.is_file(f"{out}/curves.png")
    assert {"config.json", "tokenizer.json"} <= set(storage.listdir(f"{out}/hf"))
    assert not os.listdir(bucket_run["work"]), "nothing written to the working folder (no local 'gs:' folder)"


def test_export_and_eval_read_a_bucket_run(bucket_run, tmp_path, capsys):
    from ringjax.cli import main

    out = bucket_run["out"]
    dest = str(tmp_path / "hf")
    assert main(["export", f"{out}/math/checkpoints/4", dest]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tokenizer_files"] == ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    assert {"config.json", "tokenizer.json"} <= set(os.listdir(dest))
    assert main(["eval", f"out={out}", *TINY, "eval.engine=jax"]) == 0
    assert "| " in capsys.readouterr().out
