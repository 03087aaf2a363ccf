"""`ringjax train`: a shortened demo pipeline end to end in a fresh process (interrupted with Ctrl-C during the
last stage, then resumed by the same command), its outputs, and the export loaded by real SGLang. Every command
runs from a working folder with relative paths, as a user types them."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import foreign_lines

from ringjax.pipeline.tokenizer import Tokenizer

# The embedded demo, shortened: fewer tasks, 20 SFT steps, 3 + 4 RL steps, 8 held-out prompts per domain.
SHORT = ["data.synthetic.math=200", "data.synthetic.code=100", "data.synthetic.sft_per_domain=160",
         "data.synthetic.eval_per_domain=8", "sft.train.steps=20", "sft.train.optim.total_steps=20",
         "sft.train.checkpoint_every=10", "sft.train.batch_size=16", "sft.train.rows=16", "sft.band_miss=closest",
         "stages.0.steps=3", "stages.1.steps=4", "rl.checkpoint_every=2", "eval.samples=2"]


def _cmd(out="run"):
    return [sys.executable, "-m", "ringjax.cli", "train", f"out={out}", *SHORT, "--no-progress"]


def _env():
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # as a user runs it: one CPU device


def _metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs the short pipeline into `out=run` from a working folder, sends SIGINT once stage `code` has logged a
    step, then reruns the same command from the same folder."""
    work = str(tmp_path_factory.mktemp("pipeline"))
    out = os.path.join(work, "run")
    code_log = os.path.join(out, "code", "logs", "metrics.jsonl")
    first = subprocess.Popen(_cmd(), cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 900
    while not (os.path.isfile(code_log) and _metrics(code_log)):
        assert first.poll() is None, f"the run ended before stage code started:\n{first.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "stage code did not start within 900 s"
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    interrupted_log = first.communicate(timeout=300)[0]
    interrupted_steps = [m["step"] for m in _metrics(code_log)]
    second = subprocess.run(_cmd(), cwd=work, env=_env(), capture_output=True, text=True, timeout=900)
    return {"work": work, "out": out, "first_rc": first.returncode, "first_log": interrupted_log,
            "interrupted_steps": interrupted_steps, "second_rc": second.returncode,
            "second_log": second.stdout + second.stderr}


def test_ctrl_c_checkpoints_and_the_same_command_resumes(run):
    assert run["first_rc"] == 130, run["first_log"][-3000:]
    assert "stopped in stage code" in run["first_log"]
    stopped_at = run["interrupted_steps"][-1]
    assert stopped_at < 4 and os.path.isdir(os.path.join(run["out"], "code", "checkpoints", str(stopped_at)))
    assert run["second_rc"] == 0, run["second_log"][-3000:]
    assert "resuming run" in run["second_log"]
    # finished stages are not run again; the interrupted one continues after its checkpoint, no step twice
    assert [m["step"] for m in _metrics(os.path.join(run["out"], "math", "logs", "metrics.jsonl"))] == [1, 2, 3]
    assert [m["step"] for m in _metrics(os.path.join(run["out"], "code", "logs", "metrics.jsonl"))] == [1, 2, 3, 4]


def test_the_console_holds_ringjax_lines_only(run):
    """Interrupted and resumed, with Ray workers: no dependency (Ray, JAX, Orbax, absl, ...) prints a line."""
    for log in (run["first_log"], run["second_log"]):
        assert foreign_lines(log) == [], log[-3000:]


def test_every_stage_ran_and_left_its_outputs(run):
    out = run["out"]
    state = json.load(open(os.path.join(out, "state.json")))
    assert json.load(open(os.path.join(out, "run.json")))["out"] == out  # recorded absolute
    assert set(state["done"]) == {"sft", "math", "code"}
    assert state["done"]["sft"]["step"] == 20 and state["done"]["sft"]["picked_step"] in (10, 20)
    assert sorted(os.listdir(os.path.join(out, "sft", "checkpoints"))) == ["10", "20"]
    assert "3" in os.listdir(os.path.join(out, "math", "checkpoints"))
    assert "4" in os.listdir(os.path.join(out, "code", "checkpoints"))
    results = json.load(open(os.path.join(out, "results.json")))
    assert list(results["accuracy"]) == ["sft", "math", "code"]
    for point, acc in results["accuracy"].items():
        assert set(acc) == {"math", "code"} and all(0.0 <= a <= 1.0 for a in acc.values()), point
    assert "| after | code | math | mean |" in run["second_log"]  # the accuracy table is printed
    for logs in ("sft/logs", "math/logs", "code/logs", "logs/eval"):
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, logs))), logs
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    export = os.path.join(out, "hf")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert os.path.isfile(os.path.join(export, name)), name
    assert any(f.endswith(".safetensors") for f in os.listdir(export))
    config = json.load(open(os.path.join(export, "config.json")))
    tok = Tokenizer.load(export)
    assert (config["eos_token_id"], config["pad_token_id"]) == (tok.eos_id, tok.pad_id)


def test_a_different_config_is_refused_before_any_compute(run, capsys):
    from ringjax.cli import main

    t0 = time.perf_counter()
    assert main(["train", f"out={run['out']}", *SHORT, "stages.1.steps=5"]) == 2
    err = capsys.readouterr().err
    assert "holds a different run" in err and "stages.1.steps" in err
    assert time.perf_counter() - t0 < 10


@pytest.mark.sglang
def test_the_export_loads_in_sglang_with_its_tokenizer(run):
    """SGLang starts on the export with its tokenizer files and scores a tokenized teacher trace like ringjax."""
    import jax
    import jax.numpy as jnp

    from ringjax.hf import from_pretrained
    from sglang_support.runner import run_engine

    export = os.path.join(run["out"], "hf")
    tok = Tokenizer.load(export)
    seq = tok.encode("Compute 3+8-5.\n") + tok.encode("3+8=11. 11-5=6. \\boxed{6}") + [tok.eos_id]
    got = run_engine(export, [seq], engine_kwargs={"skip_tokenizer_init": False})["logprobs"][0]
    model = from_pretrained(export)
    want = jax.jit(lambda t: model.token_logprobs(t)[0])(jnp.asarray([seq], jnp.int32))[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


def test_eval_command_scores_any_stage_checkpoint(run, capsys, monkeypatch):
    from ringjax.cli import main

    monkeypatch.chdir(run["work"])
    assert main(["eval", "out=run", *SHORT, "--checkpoint", "run/math"]) == 0
    out = capsys.readouterr().out
    table, rest = out.split("\n{", 1)
    result = json.loads("{" + rest)
    assert set(result["accuracy"]) == {"math", "code"} and result["prompts"] == {"math": 8, "code": 8}
    assert f"{result['accuracy']['code']:.3f}" in table


def test_sft_and_pick_checkpoint_commands_with_relative_paths(run, capsys, monkeypatch):
    from ringjax.cli import main

    monkeypatch.chdir(run["work"])
    assert main(["sft", "out=run", *SHORT, "--no-progress"]) == 0  # SFT is done: it reports the pick
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex("\n{\n") + 1:])  # after ringjax's lines, the JSON summary
    assert summary["resumed"] and summary["sft"]["picked_step"] in (10, 20)
    assert main(["pick-checkpoint", "run/sft", "--band", "0", "100"]) == 0
    picked = json.loads(capsys.readouterr().out)
    assert picked["step"] == 20 and picked["path"] == os.path.join(run["out"], "sft", "checkpoints", "20")


def test_a_moved_run_folder_resumes_in_its_new_place(run, tmp_path):
    """The run folder copied elsewhere: the same command with the new `out=` (from another working folder) resumes
    it there, says so once, and writes the new place into run.json."""
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(run["out"], moved)
    rerun = subprocess.run(_cmd("elsewhere/moved"), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                           timeout=600)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert log.count(f"moved from {run['out']} to {moved}") == 1 and "resuming run" in log
    assert json.load(open(moved / "run.json"))["out"] == str(moved)
    assert json.load(open(moved / "results.json"))["accuracy"] == json.load(
        open(os.path.join(run["out"], "results.json")))["accuracy"]
    again = subprocess.run(_cmd("moved"), cwd=moved.parent, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "moved from" not in again.stdout + again.stderr
