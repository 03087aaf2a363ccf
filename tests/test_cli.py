"""The `ringjax` command line: `info`, `export` / `import` round trips, and errors on bad input."""

import json
import os

import numpy as np
import pytest
from flax import nnx

import ringjax
from ringjax.cli import main
from ringjax.hf import from_pretrained


def test_import_then_export_round_trip(tmp_path, capsys, monkeypatch):
    """HF folder -> `ringjax import` (Orbax) -> `ringjax export` (HF): the same weights, config and architecture.
    Every path is relative to the working folder, as a user types them (Orbax itself takes absolute paths only)."""
    monkeypatch.chdir(tmp_path)
    src, ckpt, back = "hf", "orbax", "hf2"
    assert main(["export", "preset:tiny-v2", src]) == 0
    assert main(["import", src, ckpt]) == 0
    step_dir = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"]
    assert step_dir == str(tmp_path / "orbax" / "0")  # resolved once, printed absolute
    assert main(["export", os.path.join(ckpt, "0"), back]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "BailingMoeV2ForCausalLM"
    a, b = nnx.state(from_pretrained(src)), nnx.state(from_pretrained(back))
    for (path, got), (_, want) in zip(nnx.to_flat_state(b), nnx.to_flat_state(a), strict=True):
        np.testing.assert_array_equal(np.asarray(got[...]), np.asarray(want[...]), err_msg=str(path))
    assert json.load(open(os.path.join(src, "config.json"))) == json.load(open(os.path.join(back, "config.json")))
    assert main(["import", src, ckpt]) == 2  # never over an existing checkpoint
    assert "exists" in capsys.readouterr().err


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
    (["export", "preset:tiny-v1", "gs://bucket/model"], "export destination='gs://bucket/model': object-store URLs"),
    (["train", "out=s3://bucket/run"], "out='s3://bucket/run': not a supported location"),
    (["train", "out=gs://Not_A_Bucket/run"], "out='gs://Not_A_Bucket/run': not a supported location"),
    (["train", "out=out", "data.source=files", "data.prompts=s3://b/p.jsonl"], "data.prompts='s3://b/p.jsonl'"),
])
def test_bad_input_names_the_culprit(argv, culprit, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ringjax {argv[0]}: error:") and culprit in err
    assert not os.listdir(tmp_path), "nothing is written (a URL read as a relative path made a local 'gs:' folder)"
