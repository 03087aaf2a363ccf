"""The run's PNG (`ringjax.pipeline.report.plot_curves`): written whole, and without a plotting library's warning
when a run has no RL step or no evaluation yet."""

import json
import os
import warnings

import pytest

from ringjax.pipeline.report import plot_curves

PNG = b"\x89PNG\r\n\x1a\n"


def _log(folder, rewards):
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for step, reward in enumerate(rewards, start=1):
            f.write(json.dumps({"step": step, "reward_mean": reward}) + "\n")
    return str(folder)


@pytest.mark.parametrize("with_steps", [True, False])
def test_curves_are_written_without_warnings(tmp_path, with_steps):
    stages = [("math", _log(tmp_path / "math", [0.2, 0.4, 0.5] if with_steps else [])),
              ("code", str(tmp_path / "missing"))]  # a stage not started: no log folder
    evals = {"sft": {"accuracy": {"math": 0.3, "code": 0.1}, "rl_step": 0}}
    if with_steps:
        evals["math"] = {"accuracy": {"math": 0.5, "code": 0.1}, "rl_step": 3}
    path = str(tmp_path / "curves.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot_curves(path, stages, evals if with_steps else {}) == path
    with open(path, "rb") as f:
        assert f.read(8) == PNG
    assert os.listdir(tmp_path).count("curves.png.tmp.png") == 0
