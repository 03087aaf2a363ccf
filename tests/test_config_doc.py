"""Config documentation: every config field has a one-line description where it is defined, and `ringjax config`
prints the resolved config as commented YAML that loads back to the same config (demo and every recipe)."""

import dataclasses
import os

import pytest
import yaml

from ringjax.cli import main
from ringjax.config_doc import commented_yaml, config_classes, field_doc, plain, undocumented
from ringjax.config_io import from_dict
from ringjax.model.config import LingConfig
from ringjax.pipeline.config import PipelineConfig, load_pipeline
from rollout.sglang.config import SGLangConfig

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
RECIPES = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".yaml") and not f.endswith("_rl.yaml"))

# `model.overrides` holds LingConfig fields and `rl.rollout.sglang` SGLangConfig fields (plain mappings in the
# pipeline config), so their dataclasses are documented to the same standard.
ROOTS = (PipelineConfig, LingConfig, SGLangConfig)


@pytest.mark.parametrize("root", ROOTS, ids=lambda c: c.__name__)
def test_every_config_field_has_a_description(root):
    assert undocumented(root) == []


def test_reachable_classes_include_every_section():
    names = {c.__name__ for c in config_classes(PipelineConfig)}
    assert {"ModelSection", "MeshSection", "TokenizerSection", "DataSection", "SyntheticSection", "SFTSection",
            "SFTConfig", "OptimConfig", "RLConfig", "LossConfig", "RolloutConfig", "StageSection", "EvalSection",
            "ExportSection"} <= names
    assert {c.__name__ for c in config_classes(LingConfig)} == {"LingConfig", "RopeScaling", "ComputeConfig"}


@dataclasses.dataclass(frozen=True)
class _Example:
    documented: int = 1  # a trailing comment
    below: str = "x"
    """an attribute docstring"""
    # a comment above is a heading, not a description
    bare: float = 0.0


def test_descriptions_come_from_the_field_line_or_the_docstring_below():
    assert field_doc(_Example, "documented") == "a trailing comment"
    assert field_doc(_Example, "below") == "an attribute docstring"
    assert undocumented(_Example) == ["_Example.bare"]  # a new undocumented field fails the check
    text = commented_yaml(_Example(bare=2.5))
    assert "documented: 1  # a trailing comment\n" in text and "bare: 2.5\n" in text
    assert yaml.safe_load(text) == {"documented": 1, "below": "x", "bare": 2.5}


def _printed(capsys, argv):
    assert main(["config", *argv]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", [None, *RECIPES])
def test_config_command_prints_the_resolved_config(name, capsys):
    """Demo and every recipe: the YAML loads back to the config `ringjax train` would run, each field commented."""
    path = None if name is None else os.path.join(CONFIGS, name)
    text = _printed(capsys, [] if path is None else [path])
    cfg = load_pipeline(path)
    loaded = yaml.safe_load(text)
    assert loaded == plain(cfg)
    assert plain(from_dict(PipelineConfig, loaded)) == loaded  # and it is a valid pipeline config as printed
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body and all("  # " in line for line in body), [line for line in body if "  # " not in line][:5]
    assert f"  phi: {cfg.rl.phi}  # {field_doc(type(cfg.rl), 'phi')}" in body


def test_config_command_applies_overrides(capsys):
    text = _printed(capsys, ["rl.loss.alpha=0.4", "stages.0.steps=3", "rl.rollout.mode=c3po++"])
    loaded = yaml.safe_load(text)
    assert loaded["rl"]["loss"]["alpha"] == 0.4 and loaded["rl"]["rollout"]["mode"] == "c3po++"
    assert loaded["stages"][0]["steps"] == 3
    assert "rl.loss.alpha=0.4" in text.splitlines()[0]


def test_config_command_rejects_a_bad_key(capsys):
    assert main(["config", "rl.loss.alpah=0.4"]) == 2
    assert "rl.loss.alpah" in capsys.readouterr().err
