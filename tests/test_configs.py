"""Run configs: every YAML in configs/ loads into its dataclass; mistakes fail naming the key or value."""

import json
import os

import pytest

from ringjax.config_io import load_config
from ringjax.trainer.rl import RLConfig

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(CONFIGS) if f.endswith("_rl.yaml")))
def test_shipped_rl_configs_load(name):
    cfg = load_config(RLConfig, os.path.join(CONFIGS, name))
    assert cfg.seq_len >= cfg.max_prompt_len + cfg.max_new_tokens


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
    ("loss.phi=80", "loss.phi"),  # phi is rl.phi alone: the loss receives the step's
    ("stepz=3", "stepz"),
    ("loss.alpha=6.0", "loss.alpha=6.0 must be <= loss.beta=5.0"),
    ("optim.lr=-1", "optim.lr=-1"),
    ("phi=4", "rl.phi=4 is smaller than one response"),
    ("steps", "not of the form key=value"),
])
def test_bad_values_name_the_culprit(override, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.").replace("(", r"\(")):
        load_config(RLConfig, os.path.join(CONFIGS, "tiny_rl.yaml"), [override])


RECIPES = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".yaml") and not f.endswith("_rl.yaml"))


def test_every_config_file_is_covered():
    rl_sections = {f for f in os.listdir(CONFIGS) if f.endswith("_rl.yaml")}
    assert set(os.listdir(CONFIGS)) - {"README.md"} == set(RECIPES) | rl_sections
    assert {"ring_lite.yaml", "ring_1t_tpu_pod.yaml", "ring_1t_gpu_sglang.yaml", "ring_mini_2_8gpu.yaml"} <= set(
        RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load_and_fit_by_plan(name):
    """Each recipe loads strictly and `ringjax plan` (abstract model on the configured mesh) says every phase fits."""
    from ringjax.pipeline.config import load_pipeline
    from ringjax.plan import plan_pipeline

    cfg = load_pipeline(os.path.join(CONFIGS, name))
    plans = plan_pipeline(cfg)
    assert set(plans) == {"sft"} | {f"rl {s.name}" for s in cfg.stages}
    for phase, plan in plans.items():
        assert plan.fits is True, f"{name} {phase}:\n{plan.table()}"
        # bf16 weights sharded, not replicated (but for the copies over data and context, which split the batch)
        replicas = plan.mesh["data"] * plan.mesh["context"]
        assert plan.param_bytes * plan.devices < 1.5 * 2 * plan.params_total * replicas
    for stage in cfg.stages:
        rl, mesh = cfg.stage_rl(stage), plans[f"rl {stage.name}"].mesh
        shards = mesh["data"] * mesh["fsdp"] * mesh["expert"]
        assert rl.loss.correction in ("icepop", "none") and rl.rows % shards == 0
        assert rl.seq_len % mesh["context"] == 0
        if rl.rollout.engine == "jax" and rl.rollout.workers == 0:  # the engine splits its slots over context too
            assert (rl.rollout.slots or rl.omega) % (shards * mesh["context"]) == 0


def test_ring_1t_recipes_are_ring_1t():
    from ringjax.pipeline.config import load_pipeline

    for name, engine in (("ring_1t_tpu_pod.yaml", "jax"), ("ring_1t_gpu_sglang.yaml", "sglang")):
        cfg = load_pipeline(os.path.join(CONFIGS, name))
        rl = cfg.stage_rl(cfg.stages[0])
        assert (cfg.model.preset, rl.loss.correction, rl.rollout.mode, rl.rollout.engine) == (
            "ring-1t", "icepop", "c3po++", engine)
        assert (rl.optim.lr, rl.loss.alpha, rl.loss.beta, rl.samples_per_prompt) == (2e-6, 0.5, 5.0, 8)


@pytest.mark.parametrize("name", ["ring_1t_tpu_pod.yaml", "ring_1t_gpu_sglang.yaml"])
def test_ring_1t_recipes_train_full_length_responses_with_context_parallelism(name):
    """Ring-1T's 65,536-token responses, whole: they fit because the context axis splits every row's tokens, and the
    plan is not a rubber stamp: the same devices without context parallelism need more activation memory than a
    device has."""
    from ringjax.pipeline.config import load_pipeline
    from ringjax.plan import plan_pipeline

    cfg = load_pipeline(os.path.join(CONFIGS, name))
    rl = cfg.stage_rl(cfg.stages[0])
    assert rl.max_new_tokens == 65536 and rl.seq_len >= rl.max_prompt_len + rl.max_new_tokens
    assert cfg.mesh.context > 1 and rl.seq_len % cfg.mesh.context == 0
    plan = plan_pipeline(cfg)["rl reasoning"]
    assert plan.fits is True and plan.mesh["context"] == cfg.mesh.context
    ways = cfg.mesh.context
    flat = load_pipeline(os.path.join(CONFIGS, name),
                         ["mesh.context=1", f"mesh.fsdp={cfg.mesh.fsdp * ways}", f"rl.rows={rl.rows * ways}"])
    flat_plan = plan_pipeline(flat)["rl reasoning"]
    assert flat_plan.devices == plan.devices and flat_plan.mesh["context"] == 1
    assert flat_plan.fits is False and flat_plan.activation_bytes > flat_plan.device_memory_bytes


@pytest.mark.parametrize("argv, culprit", [
    (["train", "no/such.yaml"], "no/such.yaml"),
    (["train", "stepz=3"], "stepz"),
    (["train", "rl.rollout.mode=fast"], "rollout.mode='fast'"),
    (["train", "stages.0.rl.loss.alpah=0.4"], "loss.alpah"),
    (["train", "rl.optim.lr=fast"], "rl.optim.lr='fast' is not a number"),
    (["train", os.path.join(CONFIGS, "ring_lite.yaml"), "out=run"], "data.prompts: data/ring_lite/math.jsonl"),
    (["sft", "data.synthetic.teacher_error_rate=2"], "teacher_error_rate=2"),
    (["plan", "mesh.tensor=0"], "mesh.tensor=0"),
    (["train", "mesh.context=3"], "sft.train.seq_len=64 is not divisible by mesh.context=3"),
    (["train", "mesh.context=2", "rl.seq_len=301"], "stages.math.rl.seq_len=301 is not divisible by mesh.context=2"),
    # a relative path that does not exist: named as typed and as resolved
    (["train", "data.source=files", "data.prompts=data/x.jsonl"], "data.prompts: data/x.jsonl (resolved to /"),
    (["train", "model.hf_path=~/no_such_ling"], "model.hf_path: ~/no_such_ling (resolved to /"),
    (["export", "no/ckpt", "out"], "export source no/ckpt (resolved to /"),
    (["import", "no/hf", "out"], "import source no/hf (resolved to /"),
    (["pick-checkpoint", "no/run"], "run folder no/run (resolved to /"),
    (["train", "rl.optim.lr=[1,"], "is not a YAML value"),
    (["train", "export.mtp=both"], "export.mtp='both'"),
])
def test_bad_input_exits_before_any_compute(argv, culprit, capsys, tmp_path, monkeypatch):
    from ringjax.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([*argv, "out=run"] if argv[0] == "train" and "out=run" not in argv else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ringjax {argv[0]}: error:") and culprit in err, err
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "runs")


def test_plan_command(capsys):
    from ringjax.cli import main

    assert main(["plan", os.path.join(CONFIGS, "ring_mini_2_8gpu.yaml"), "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert set(plans) == {"sft", "rl math", "rl code"} and plans["rl math"]["kv_cache_bytes"] > 0
    assert main(["plan", os.path.join(CONFIGS, "ring_mini_2_8gpu.yaml"), "--device-memory-gb", "16"]) == 1
    assert "fits: no" in capsys.readouterr().out


def test_every_path_is_resolved_once_against_the_working_folder(tmp_path, monkeypatch):
    """Paths in a config file and in overrides are relative to the folder the command runs in, made absolute when
    the config is built (what `run.json` records), and named as typed in errors."""
    from ringjax.pipeline.config import check_inputs, load_pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text('{"prompt": "1+1", "answer": "2", "domain": "math"}\n')
    cfg = load_pipeline(None, ["out=runs/x", "data.source=files", "data.prompts=data/p.jsonl", "sft.enabled=false",
                               "tokenizer.path=./tok"])
    assert cfg.out == str(tmp_path / "runs" / "x")
    assert cfg.data.prompts == (str(tmp_path / "data" / "p.jsonl"),)
    assert cfg.tokenizer.path == str(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match=r"tokenizer.path: \./tok \(resolved to .*/tok\) does not exist"):
        check_inputs(cfg)
    monkeypatch.chdir(tmp_path / "data")  # a config built elsewhere keeps its paths
    assert load_pipeline(None, [f"out={cfg.out}"]).out == cfg.out
