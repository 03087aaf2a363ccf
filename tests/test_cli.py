"""The `ringjax` command line: the README's demo end to end, `info`, `export`, and errors on bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import ringjax
from ringjax.cli import main
from ringjax.hf import from_pretrained


def test_demo_end_to_end(tmp_path):
    """The README's first command, in a fresh process as a user runs it (8 simulated CPU devices), writing
    into a folder that does not exist yet."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "ringjax.cli", "demo", "--out", str(tmp_path / "runs" / "demo")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["devices"] == 8 and summary["export_reload_bit_exact"] is True
    assert summary["generated_tokens"] == 8 * 32
    assert summary["prompt_mean_logprob"] < 0
    assert os.path.exists(os.path.join(summary["export"], "config.json"))


def test_info_preset(capsys):
    assert main(["info", "preset:ling-lite"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["params_total"] / 1e9, 2) == 16.80 and round(out["params_active"] / 1e9, 2) == 2.75
    assert out["config"]["architecture"] == "BailingMoeForCausalLM"


def test_export_preset_then_info_and_reload(tmp_path, capsys):
    out_dir = str(tmp_path / "tiny")
    assert main(["export", "preset:tiny-v1", out_dir, "--max-shard-size", "200KB"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "BailingMoeForCausalLM"
    assert main(["info", out_dir]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params_total"] == ringjax.count_params(ringjax.preset("tiny-v1")).total
    reloaded, fresh = nnx.state(from_pretrained(out_dir)), nnx.state(ringjax.create_model(ringjax.preset("tiny-v1")))
    for (path, got), (_, want) in zip(nnx.to_flat_state(reloaded), nnx.to_flat_state(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(got[...]), np.asarray(want[...]), err_msg=str(path))
    # exporting again onto the same folder needs --overwrite, and says so
    assert main(["export", "preset:tiny-v1", out_dir]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv, culprit", [
    (["info", "preset:ling-huge"], "ling-huge"),
    (["export", "does/not/exist", "out"], "does/not/exist"),
])
def test_bad_input_names_the_culprit(argv, culprit, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ringjax {argv[0]}: error:") and culprit in err
    assert not os.path.exists(tmp_path / "out")
