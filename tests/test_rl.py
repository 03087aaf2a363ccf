"""The RL loop end to end on a tiny model: exact-phi steps, metrics files, kill-and-resume, bad input."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

import ringjax
from ringjax.config_io import load_config
from ringjax.data import PromptRecord
from ringjax.trainer.metrics import read_metrics
from ringjax.trainer.rl import RLConfig, train_rl

# configs/tiny_rl.yaml: phi 80, 2 prompts x 4 samples x 12 tokens = 96 per rollout batch, so every step leaves a
# cut tail in the pool; checkpoints every 2 steps, keep 2
CFG = load_config(RLConfig, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                         "tiny_rl.yaml"), ["steps=5"])
PHI = CFG.phi
RECORDS = [PromptRecord(id=f"p{i}", prompt=f"What is {i} + {i}?", domain="math", answer=str(2 * i))
           for i in range(10)]  # 5 batches of 2 per epoch: the runs cross an epoch boundary


def even_tokens(record, text):
    """A dense toy reward (fraction of even bytes of the response) so every group has non-zero advantages."""
    data = np.frombuffer(text.encode(), np.uint8)
    return float(np.mean(data % 2 == 0)) if len(data) else 0.0


class Crash(Exception):
    pass


def _model(name="tiny-v2"):
    return ringjax.create_model(ringjax.preset(name), seed=0)


def _flat_params(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("rl") / "run")
    return train_rl(_model(), RECORDS, even_tokens, CFG, run_dir=run_dir), run_dir


def test_steps_take_exactly_phi_tokens_and_log_everything(uninterrupted):
    result, run_dir = uninterrupted
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5] and int(result.state.step) == 5
    assert all(h["tokens"] == PHI for h in result.history)
    assert any(h["pool_tokens"] > 0 for h in result.history)  # cut tails were carried over, not lost
    assert any(h["stale_tokens_frac"] > 0 for h in result.history)  # ...and trained on under a newer policy
    logged = read_metrics(os.path.join(run_dir, "logs"))
    assert [row["step"] for row in logged] == [1, 2, 3, 4, 5]
    for key in ("icepop_masked_frac", "logp_diff_mean", "logp_diff_max", "kl_infer_train_mean", "entropy_mean",
                "entropy_masked_mean", "grad_norm", "reward_mean", "response_len_mean", "tokens_per_s", "step_s",
                "skipped_updates"):
        assert key in logged[-1], key
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run_dir, "logs")))
    # every checkpoint_every=2 steps, plus the final step (5), keeping the newest keep_checkpoints=2
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["4", "5"]


def test_kill_and_resume_is_exact(uninterrupted, tmp_path):
    """A run that crashes after step 3 (last save: step 2) and is restarted ends bit-identical to one that never
    stopped, having drawn the same prompts for every step."""
    want, _ = uninterrupted
    run_dir = str(tmp_path / "run")

    def crash_after_3(step, metrics):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        train_rl(_model(), RECORDS, even_tokens, CFG, run_dir=run_dir, on_step=crash_after_3)
    first = read_metrics(os.path.join(run_dir, "logs"))
    assert [row["step"] for row in first] == [1, 2, 3]
    resumed = train_rl(_model(), RECORDS, even_tokens, CFG, run_dir=run_dir)
    assert [h["step"] for h in resumed.history] == [3, 4, 5]
    assert [h["prompt_ids"] for h in resumed.history] == [h["prompt_ids"] for h in want.history[2:]]
    for got, ref in zip(_flat_params(resumed.state), _flat_params(want.state), strict=True):
        np.testing.assert_array_equal(got, ref)
    assert int(resumed.state.step) == 5


# C3PO++: 24 of the 512 ids end a response (about 4.5% a token), so lengths spread over 1..12 and an iteration
# ends (>= phi tokens of complete groups) with groups part-generated: partial rollouts carry over into the next
# policy version and into checkpoints
CPP = dataclasses.replace(CFG, steps=4, stop_ids=tuple(range(2, 26)),
                          rollout=dataclasses.replace(CFG.rollout, mode="c3po++", omega=16, decode_chunk=4))


def _crash_and_resume(cfg: RLConfig, run_dir: str, crash_at: int):
    """Runs `cfg` in `run_dir` until a crash right after step `crash_at` (checkpointed), checks that checkpoint
    holds partial rollouts, resumes to the end and returns the resumed run's result (its steps checked)."""
    def crash(step, metrics):
        if step == crash_at:
            raise Crash

    with pytest.raises(Crash):
        train_rl(_model(), RECORDS, even_tokens, cfg, run_dir=run_dir, on_step=crash)
    saved = json.load(open(os.path.join(run_dir, "checkpoints", str(crash_at), "rollout", "metadata")))
    assert any(m["tokens"] and not m["done"] for g in saved["scheduler"]["groups"] for m in g["members"])
    resumed = train_rl(_model(), RECORDS, even_tokens, cfg, run_dir=run_dir)
    assert [h["step"] for h in resumed.history] == list(range(crash_at + 1, cfg.steps + 1))
    return resumed


def test_c3po_pp_kill_and_resume_continues_the_same_partial_rollouts(tmp_path):
    cfg = dataclasses.replace(CPP, checkpoint_every=1)
    want = train_rl(_model(), RECORDS, even_tokens, cfg, run_dir=str(tmp_path / "a"))
    assert all(h["tokens"] == PHI for h in want.history)
    assert any(h["rollout_resubmitted"] > 0 for h in want.history)  # partial rollouts were continued...
    assert any(h["version_lag_mean"] > 0 for h in want.history)  # ...and trained on under a newer policy
    # crash right after the first checkpoint that holds partial rollouts
    crash_at = next(h["step"] for h in want.history[:-1] if h["inflight_groups"] > 0)
    resumed = _crash_and_resume(cfg, str(tmp_path / "b"), crash_at)
    assert [h["prompt_ids"] for h in resumed.history] == [h["prompt_ids"] for h in want.history[crash_at:]]
    for got, ref in zip(_flat_params(resumed.state), _flat_params(want.state), strict=True):
        np.testing.assert_array_equal(got, ref)


def test_keep_kv_trains_on_responses_continued_in_the_engine_and_resumes_without_loss(tmp_path):
    """`rollout.carry_kv=keep`: carried responses stay in the engine across the update (counted in rollout_kept,
    never re-submitted), their later tokens carry the newer version; a crash after a checkpoint saves what the
    engine held (peek), and the resumed run finishes every step with exactly phi tokens."""
    cfg = dataclasses.replace(CPP, checkpoint_every=1, rollout=dataclasses.replace(CPP.rollout, carry_kv="keep"))
    want = train_rl(_model(), RECORDS, even_tokens, cfg, run_dir=str(tmp_path / "a"))
    assert all(h["tokens"] == PHI for h in want.history)
    assert sum(h["rollout_kept"] for h in want.history) > 0
    assert all(h["rollout_resubmitted"] == 0 for h in want.history)  # nothing re-prefilled: kept, not re-submitted
    assert any(h["version_lag_mean"] > 0 for h in want.history)
    crash_at = next(h["step"] for h in want.history[:-1] if h["rollout_kept"] > 0)
    resumed = _crash_and_resume(cfg, str(tmp_path / "b"), crash_at)
    assert all(h["tokens"] == PHI for h in resumed.history)
    assert resumed.history[0]["rollout_resubmitted"] > 0  # the saved partial responses were continued


def test_resume_refuses_another_model(uninterrupted, tmp_path):
    _, run_dir = uninterrupted
    with pytest.raises(ValueError, match="num_hidden_layers|hidden_size|architecture"):
        train_rl(_model("tiny-v1"), RECORDS, even_tokens, CFG, run_dir=run_dir)


def test_drop_leftover_counts_what_it_drops():
    cfg = dataclasses.replace(CFG, steps=2, checkpoint_every=0, leftover="drop")
    result = train_rl(_model(), RECORDS, even_tokens, cfg)
    assert all(h["dropped_tokens"] == 96 - PHI and h["pool_tokens"] == 0 for h in result.history)


def test_sample_budget_trains_whole_groups_of_varying_token_counts():
    """`budget=groups`: each step trains every token of prompts_per_batch whole groups (2 x 4 responses), so the
    token count is whatever they hold (<= 96: responses stop early at one of 32 stop ids), not phi."""
    cfg = dataclasses.replace(CFG, steps=3, checkpoint_every=0, budget="groups", stop_ids=tuple(range(0, 256, 8)),
                              loss=dataclasses.replace(CFG.loss, aggregation="seq_mean"))
    result = train_rl(_model(), RECORDS, even_tokens, cfg)
    assert all(h["step_responses"] == 8 for h in result.history)
    assert all(8 <= h["tokens"] <= 96 and np.isfinite(h["grad_norm"]) for h in result.history)
    assert len({h["tokens"] for h in result.history}) > 1  # early stops make the count vary
    assert all(h["step_compiles"] == 1 for h in result.history)  # ...and the train step compiled once
    assert result.history[-1]["grad_norm"] > 0


@pytest.mark.parametrize("change, culprit", [
    ({"phi": 8}, "rl.phi=8 is smaller than one response"),
    ({"budget": "samples"}, "rl.budget='samples'"),
    ({"seq_len": 20}, "rl.seq_len=20"),
    ({"steps": 0}, "rl.steps=0"),
    ({"leftover": "keep-some"}, "rl.leftover"),
])
def test_bad_config_names_the_value(change, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
        dataclasses.replace(CFG, **change)


def test_checkpoint_extras_are_json(uninterrupted):
    _, run_dir = uninterrupted
    data = json.load(open(os.path.join(run_dir, "checkpoints", "4", "data", "metadata")))
    assert isinstance(data, dict) and data


def test_kl_to_the_starting_policy_and_entropy_bonus():
    """Ring-lite's optional terms: KL(pi || pi_ref) to the starting model is 0 at the first step (same weights)
    and grows once the policy moves."""
    loss = dataclasses.replace(CFG.loss, kl_coef=1e-3, entropy_coef=5e-4)
    cfg = dataclasses.replace(CFG, steps=2, checkpoint_every=0, loss=loss)
    result = train_rl(_model(), RECORDS, even_tokens, cfg)
    kl = [h["kl_ref"] for h in result.history]
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[1] > 1e-6
