"""Run configs: every YAML in configs/ loads into its dataclass; mistakes fail naming the key or value."""

import os

import pytest

from ringjax.config_io import load_config
from ringjax.trainer.rl import RLConfig

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(CONFIGS) if f.endswith("_rl.yaml")))
def test_shipped_rl_configs_load(name):
    cfg = load_config(RLConfig, os.path.join(CONFIGS, name))
    assert cfg.loss.phi == cfg.phi and cfg.seq_len >= cfg.max_prompt_len + cfg.max_new_tokens


def test_recipe_values():
    lite = load_config(RLConfig, os.path.join(CONFIGS, "ring_lite_rl.yaml"))
    assert (lite.phi, lite.optim.lr, lite.loss.kl_coef, lite.loss.entropy_coef) == (409600, 3e-6, 1e-3, 5e-4)
    ring = load_config(RLConfig, os.path.join(CONFIGS, "ring_1t_rl.yaml"))
    assert (ring.loss.correction, ring.loss.alpha, ring.loss.beta, ring.optim.lr) == ("icepop", 0.5, 5.0, 2e-6)
    assert (ring.optim.b1, ring.optim.b2, ring.optim.weight_decay) == (0.9, 0.999, 0.01)


def test_overrides():
    cfg = load_config(RLConfig, os.path.join(CONFIGS, "tiny_rl.yaml"), ["steps=7", "loss.alpha=0.4"])
    assert cfg.steps == 7 and cfg.loss.alpha == 0.4 and cfg.loss.beta == 5.0


@pytest.mark.parametrize("override, culprit", [
    ("loss.alpah=0.4", "loss.alpah"),
    ("stepz=3", "stepz"),
    ("loss.alpha=6.0", "loss.alpha=6.0 must be <= loss.beta=5.0"),
    ("optim.lr=-1", "optim.lr=-1"),
    ("phi=4", "rl.phi=4 is smaller than one response"),
    ("steps", "not of the form key=value"),
])
def test_bad_values_name_the_culprit(override, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.").replace("(", r"\(")):
        load_config(RLConfig, os.path.join(CONFIGS, "tiny_rl.yaml"), [override])
