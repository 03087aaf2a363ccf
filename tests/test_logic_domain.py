"""The logic domain in the pipeline: the demo's countdown tasks and teacher (verified by the real reward), the
synthetic data with logic prompts, the demo's optional logic stage (off by default, on with the documented
command line, planned), and a short RL run on logic prompts scored by the real `RewardRouter`."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

import ringjax
from ringjax.config_io import to_dict
from ringjax.pipeline.config import DEMO, load_pipeline
from ringjax.pipeline.data import build_data
from ringjax.pipeline.logic_tasks import logic_tasks, logic_teacher_response
from ringjax.pipeline.run_dir import claim
from ringjax.pipeline.tokenizer import train_tokenizer
from ringjax.trainer.optim import OptimConfig
from ringjax.trainer.rl import RLConfig, train_rl
from ringjax.trainer.sft import SFTConfig, SFTExample, train_sft
from ringjax.trainer.state import merge_model, split_model
from rollout.rewards import RewardRouter, logic_reward
from rollout.rewards.logic import make_record

PROMPT = re.compile(r"Make (\d+) from (\d) (\d) (\d)\.\n")
LOGIC_REASONS = {"no_answer", "malformed_answer", "wrong", "wrong_numbers", "bad_record"}


def _documented_command() -> list[str]:
    """The overrides of the `ringjax train ...` line in the demo's comments that turns the logic stage on."""
    with open(DEMO) as f:
        lines = [line for line in f if line.startswith("#") and "ringjax train" in line and "logic" in line]
    assert len(lines) == 1, lines
    return lines[0].split("ringjax train", 1)[1].split()


# ---------------------------------------------------------------------------------------------------- tasks


def test_logic_tasks_are_distinct_short_and_seeded():
    records = logic_tasks(400, 0)
    assert len({r.id for r in records}) == 400 and {r.domain for r in records} == {"logic"}
    for r in records:
        m = PROMPT.fullmatch(r.prompt)
        assert m is not None and len(r.prompt) <= 20
        target, numbers = int(m.group(1)), [int(g) for g in m.groups()[1:]]
        assert numbers == sorted(numbers) and target not in numbers and 1 <= target <= 30
    assert logic_tasks(50, 3) == logic_tasks(50, 3) and logic_tasks(50, 3) != logic_tasks(50, 4)
    with pytest.raises(ValueError, match="only 1804 distinct"):
        logic_tasks(1805, 0)


def test_teacher_traces_are_verified_by_the_logic_reward():
    records = logic_tasks(300, 1)
    rng = np.random.default_rng(0)
    right = [logic_teacher_response(r, rng, 0.0) for r in records]
    assert all(logic_reward(r, t).score == 1.0 for r, t in zip(records, right))
    assert all(t.endswith("}") and len(t) <= 40 for t in right)
    slipped = [logic_teacher_response(r, rng, 1.0) for r in records]
    assert all(logic_reward(r, t).reason in ("wrong", "wrong_numbers") for r, t in zip(records, slipped))
    rate = np.mean([logic_reward(r, logic_teacher_response(r, rng, 0.3)).score == 0 for r in records])
    assert 0.2 < rate < 0.4
    example = make_record({"task": "countdown", "numbers": [2, 3, 4], "target": 20, "use_all": False}, "x")
    assert logic_teacher_response(example, rng, 0.0) == "2+3=5. 5*4=20. \\boxed{(2+3)*4}"


def test_teacher_refuses_other_records():
    rng = np.random.default_rng(0)
    sudoku = make_record({"task": "sudoku", "size": 4, "givens": [[0] * 4] * 4}, "a sudoku")
    with pytest.raises(ValueError, match=f"prompt {sudoku.id} is not a logic_tasks countdown"):
        logic_teacher_response(sudoku, rng, 0.0)


# ---------------------------------------------------------------------------------------------------- data, config

SMALL = ["data.synthetic.math=60", "data.synthetic.code=40", "data.synthetic.sft_per_domain=20",
         "data.synthetic.eval_per_domain=8"]


def test_synthetic_data_adds_logic_and_leaves_other_domains_alone():
    without = build_data(load_pipeline(None, SMALL))
    data = build_data(load_pipeline(None, SMALL + ["data.synthetic.logic=50"]))
    logic = [r for r in data.prompts if r.domain == "logic"]
    held = [r for r in data.eval if r.domain == "logic"]
    assert len(logic) == 50 and len(held) == 8 and not {r.id for r in logic} & {r.id for r in held}
    assert [r for r in data.prompts if r.domain != "logic"] == without.prompts
    assert [r for r in data.eval if r.domain != "logic"] == without.eval
    assert data.sft[:40] == without.sft and len(data.sft) == 60 and len(data.sft_eval) == 24
    assert all(PROMPT.fullmatch(p) for p, _ in data.sft[40:])


def test_demo_logic_stage_is_off_by_default(tmp_path):
    cfg = load_pipeline(None, [f"out={tmp_path / 'demo'}"])
    assert [s.name for s in cfg.stages] == ["math", "code"] and cfg.data.synthetic.logic == 0
    assert [s["name"] for s in to_dict(cfg)["stages"]] == ["math", "code"]  # what run.json records
    assert claim(cfg, log=lambda _: None) is False and claim(cfg, log=lambda _: None) is True  # resumes
    on = load_pipeline(None, [f"out={tmp_path / 'demo'}", *_documented_command()[1:]])
    with pytest.raises(FileExistsError, match="different run"):  # turning logic on is another run
        claim(on, log=lambda _: None)


def test_a_run_json_older_than_the_new_fields_still_resumes(tmp_path):
    cfg = load_pipeline(None, [f"out={tmp_path / 'demo'}"])
    assert claim(cfg, log=lambda _: None) is False
    path = tmp_path / "demo" / "run.json"
    old = json.loads(path.read_text())
    del old["data"]["synthetic"]["logic"]  # as written before the logic domain and optional stages existed
    for stage in old["stages"]:
        del stage["enabled"]
    path.write_text(json.dumps(old))
    assert claim(cfg, log=lambda _: None) is True
    old["stages"][1]["steps"] += 1  # a real difference is still refused
    path.write_text(json.dumps(old))
    with pytest.raises(FileExistsError, match=r"differs in \['stages.1.steps'\]"):
        claim(cfg, log=lambda _: None)


def test_demo_logic_stage_turns_on_with_the_documented_command():
    overrides = _documented_command()
    assert overrides[0].startswith("out=") and "stages.2.enabled=true" in overrides
    cfg = load_pipeline(None, overrides)
    assert [s.name for s in cfg.stages] == ["math", "code", "logic"] and cfg.data.synthetic.logic > 0
    stage = cfg.stages[2]
    assert stage.enabled and cfg.stage_rl(stage).domain_weights == {"logic": 1.0}
    from ringjax.plan import plan_pipeline

    plans = plan_pipeline(cfg, devices=1, device_memory_gb=16)
    assert list(plans) == ["sft", "rl math", "rl code", "rl logic"] and plans["rl logic"].fits


def test_a_disabled_stage_is_still_checked_and_needs_its_data_when_on():
    with pytest.raises(ValueError, match="stages.logic.rl: unknown config key"):
        load_pipeline(None, ["stages.2.rl.bogus=1"])
    with pytest.raises(ValueError, match=r"stage logic draws domains \['logic'\].*data.synthetic"):
        load_pipeline(None, ["stages.2.enabled=true"])
    with pytest.raises(ValueError, match="enabled='maybe' must be true or false"):
        load_pipeline(None, ["stages.2.enabled=maybe"])


def test_logic_prompts_and_traces_fit_the_demo_token_budget():
    cfg = load_pipeline(None, _documented_command())
    data = build_data(cfg)
    tok = train_tokenizer(data.texts(), cfg.tokenizer.vocab_size)
    rl = cfg.stage_rl(cfg.stages[2])
    prompts = [r.prompt for r in data.prompts + data.eval if r.domain == "logic"]
    traces = [(p, r) for p, r in data.sft + data.sft_eval if PROMPT.fullmatch(p)]
    assert len(prompts) == 696 and len(traces) == 2096
    assert max(len(tok.encode(p)) for p in prompts) <= rl.max_prompt_len
    assert max(len(tok.encode(r)) + 1 for _, r in traces) <= rl.max_new_tokens  # + the end token
    assert max(len(tok.encode(p + r)) + 1 for p, r in traces) <= cfg.sft.train.seq_len


# ---------------------------------------------------------------------------------------------------- training


def test_logic_domain_trains_with_the_real_router():
    """SFT on teacher traces of 16 one-step puzzles until some sampled answers are right, then RL on the same
    puzzles scored by `RewardRouter` (the logic verifier). Weight decay is off, so the parameters move only by the
    policy gradient, which is zero unless some group's rewards differ."""
    rng = np.random.default_rng(0)
    pairs = [(r, logic_teacher_response(r, rng, 0.0)) for r in logic_tasks(100, 0)]
    pairs = [(r, t) for r, t in pairs if t.count("=") == 1][:16]  # "2*5=10. \boxed{2*5}"
    records = [r for r, _ in pairs]
    tok = train_tokenizer([t for r, response in pairs for t in (r.prompt, response)], 300)
    examples = [SFTExample(tok.encode(r.prompt), tok.encode(t) + [tok.eos_id], id=i) for i, (r, t) in enumerate(pairs)]
    model = ringjax.create_model(ringjax.preset("tiny-v2"), seed=0)
    sft = train_sft(model, examples, SFTConfig(steps=40, batch_size=32, rows=32, seq_len=40,
                                               optim=OptimConfig(lr=3e-3, weight_decay=0.0)))
    graphdef, _, _ = split_model(model)
    start = merge_model(graphdef, sft.state.params, sft.state.frozen)
    cfg = RLConfig(steps=2, phi=96, prompts_per_batch=4, samples_per_prompt=4, max_prompt_len=12,
                   max_new_tokens=24, rows=8, seq_len=40, checkpoint_every=0, eos_id=tok.eos_id)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1e-3, weight_decay=0.0))
    before = [np.asarray(x) for x in jax.tree.leaves(sft.state.params)]
    result = train_rl(start, records, RewardRouter(), cfg, encode=tok.encode, decode=tok.decode)
    history = result.history
    assert [h["step"] for h in history] == [1, 2]
    assert all(h["reward_errors"] == 0 and h["reward_timeouts"] == 0 for h in history)
    zeros = {k.removeprefix("reward_zero_") for h in history for k in h if k.startswith("reward_zero_")}
    assert zeros and zeros <= LOGIC_REASONS  # the zeros' reasons are the logic verifier's
    assert any(h["reward_mean"] > 0 for h in history)  # ...and it scored some answers right
    after = [np.asarray(x) for x in jax.tree.leaves(result.state.params)]
    assert len(before) == len(after) and any(not np.array_equal(a, b) for a, b in zip(before, after))
