"""SFT end to end on a tiny model: the loss is the mean response NLL and falls, micro-batch invariance, seeded
epochs, skipped long examples, exact resume, eval entropy per checkpoint, and the entropy-band checkpoint pick."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from helpers import random_model

import ringjax
from ringjax.cli import main
from ringjax.trainer.checkpoint import Checkpointer
from ringjax.trainer.metrics import MetricsWriter, read_metrics
from ringjax.trainer.sft import (SFTConfig, SFTExample, eval_entropies, pick_checkpoint, read_sft_jsonl,
                                 ring_lite_sft_optim, train_sft)
from ringjax.trainer.state import merge_model, split_model
from numerics import EPS32, grad_chain, model_logprob_tol

CFG = SFTConfig(epochs=3, batch_size=4, rows=4, seq_len=32, checkpoint_every=6)  # 24 usable examples: 18 steps


def _examples(n, seed):
    """Response = prompt reversed, over a small alphabet, so there is something to learn."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(2, 40, int(rng.integers(3, 8))).tolist()
        out.append((prompt, prompt[::-1]))
    return out


TRAIN = _examples(24, 0)
TRAIN[5:5] = [(list(range(2, 20)), list(range(2, 20))), ([], [3, 4])]  # too long (36 > 32), empty prompt
TRAIN.append((list(range(2, 30)), [7]))  # 29 tokens: fits
TRAIN.insert(17, (list(range(2, 31)), [7, 8, 9, 10]))  # 33 tokens: too long
EVAL = _examples(8, 1) + [SFTExample(range(2, 30), range(2, 10), id="long")]
USABLE = [i for i, (p, r) in enumerate(TRAIN) if p and len(p) + len(r) <= 32]


class Crash(Exception):
    pass


def _model():
    return random_model(ringjax.preset("tiny-v2"), seed=0)


def _params(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def _mean_tols(model, n_tokens, nll, entropy):
    """Float32 bounds (tests/numerics.py) on two code paths' means over `n_tokens` response tokens of a model's
    NLL and entropy, on 32-token rows. NLL: one log-prob tolerance (numerics.logprob_tol, ~2.8e-3 for these
    weights) plus the n-term sum (n eps32 |mean|). Entropy -sum_v p_v log p_v moves by sum_v p_v |1 + log p_v|
    |d log p_v| <= (1 + H) log-prob tolerances, plus its 512-term and n-term sums."""
    tol = model_logprob_tol(model, CFG.seq_len)
    return tol + n_tokens * EPS32 * nll, tol * (1 + entropy) + (model.config.vocab_size + n_tokens) * EPS32 * entropy


def _response_stats(model, examples, width=32):
    """Independent forward (one example per row, right-padded: a causal model ignores what follows, no packing,
    no segment ids, no token weights): the response tokens' NLLs and entropies."""
    tokens = np.zeros((len(examples), width), np.int32)
    for row, (prompt, response) in enumerate(examples):
        tokens[row, :len(prompt) + len(response)] = list(prompt) + list(response)
    logp, entropy = (np.asarray(a) for a in model.token_logprobs(tokens))
    nll, ent = [], []
    for row, (prompt, response) in enumerate(examples):
        scored = slice(len(prompt) - 1, len(prompt) + len(response) - 1)  # predicts the response tokens
        nll.append(-logp[row, scored])
        ent.append(entropy[row, scored])
    return np.concatenate(nll), np.concatenate(ent)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("sft") / "run")
    return train_sft(_model(), TRAIN, CFG, run_dir, eval_examples=EVAL), run_dir


def test_loss_falls_over_seeded_epochs_and_long_examples_are_counted(uninterrupted):
    result, run_dir = uninterrupted
    steps = CFG.total_steps(len(USABLE))
    assert len(USABLE) == 25 and steps == 19  # ceil(3 * 25 / 4)
    assert [h["step"] for h in result.history] == list(range(1, steps + 1)) and int(result.state.step) == steps
    assert result.skipped == {"too_long": 2, "empty": 1, "eval_too_long": 1, "eval_empty": 0}
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-3:]) < losses[0] - 0.2, losses
    seen = [i for h in result.history for i in h["example_ids"]]
    assert len(seen) == 3 * len(USABLE)  # the last step is short: exactly three passes
    for epoch in range(3):
        assert sorted(seen[epoch * len(USABLE):(epoch + 1) * len(USABLE)]) == USABLE
    assert seen[:len(USABLE)] != seen[len(USABLE):2 * len(USABLE)]  # a fresh order per epoch
    logged = read_metrics(os.path.join(run_dir, "logs"))
    assert [row["step"] for row in logged] == list(range(1, steps + 1))
    for key in ("loss", "nll_mean", "entropy_mean", "tokens", "grad_norm", "lr", "epoch", "tokens_per_s"):
        assert key in logged[-1], key
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints")), key=int) == ["6", "12", "18", "19"]


def test_first_step_loss_is_the_mean_response_nll(uninterrupted):
    result, _ = uninterrupted
    first = result.history[0]
    nll, ent = _response_stats(_model(), [TRAIN[i] for i in first["example_ids"]])
    assert first["tokens"] == len(nll)
    nll_tol, ent_tol = _mean_tols(_model(), len(nll), nll.mean(), ent.mean())
    np.testing.assert_allclose([first["loss"], first["nll_mean"]], nll.mean(), atol=nll_tol, rtol=0)
    np.testing.assert_allclose(first["entropy_mean"], ent.mean(), atol=ent_tol, rtol=0)


def test_micro_batch_size_does_not_change_the_first_update(uninterrupted):
    result, _ = uninterrupted
    split = train_sft(_model(), TRAIN, dataclasses.replace(CFG, rows=1, epochs=None, steps=1, checkpoint_every=0),
                      eval_examples=EVAL)
    got, want = split.history[0], result.history[0]
    assert got["example_ids"] == want["example_ids"] and got["micro_batches"] > want["micro_batches"] == 1
    # the loss (the mean NLL) and the gradient norm, both before the AdamW update, within float32 bounds: the
    # norm within the gradients' chain (numerics.grad_chain over the <= 4 x 32 positions, ~4.5e3 terms) plus its
    # own sum of squares, <= 32768 positive terms (the largest parameter), at eps32 each: ~4.4e-3 relative
    nll_tol, _ = _mean_tols(_model(), want["tokens"], want["loss"], 0.0)
    np.testing.assert_allclose(got["loss"], want["loss"], atol=nll_tol, rtol=0)
    norm_rel = (grad_chain(ringjax.preset("tiny-v2"), CFG.seq_len, 4 * CFG.seq_len) + 512 * 64) * EPS32
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=norm_rel)


def test_eval_entropy_is_recorded_per_checkpoint(uninterrupted):
    result, run_dir = uninterrupted
    entropies = eval_entropies(run_dir)
    by_step = {h["step"]: h for h in result.history}
    assert sorted(entropies) == [6, 12, 18, 19]
    for step, entropy in entropies.items():
        assert entropy == pytest.approx(by_step[step]["eval_entropy"], rel=1e-12) and 0 < entropy < np.log(512)
    graphdef, _, _ = split_model(_model())
    final = merge_model(graphdef, result.state.params, result.state.frozen)
    _, ent = _response_stats(final, [(x[0], x[1]) for x in EVAL[:-1]])
    np.testing.assert_allclose(entropies[19], ent.mean(), atol=_mean_tols(final, ent.size, 0.0, ent.mean())[1])


def test_resume_after_a_crash_is_bit_exact(uninterrupted, tmp_path):
    want, want_dir = uninterrupted
    run_dir = str(tmp_path / "run")

    def crash_after_8(step, metrics):
        if step == 8:
            raise Crash

    with pytest.raises(Crash):
        train_sft(_model(), TRAIN, CFG, run_dir, eval_examples=EVAL, on_step=crash_after_8)
    assert [row["step"] for row in read_metrics(os.path.join(run_dir, "logs"))] == list(range(1, 9))
    resumed = train_sft(_model(), TRAIN, CFG, run_dir, eval_examples=EVAL)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in want.history[6:]]
    # steps 7 and 8 ran twice (after checkpoint 6): metrics.jsonl keeps one row per step, the rerun's
    rows = read_metrics(os.path.join(run_dir, "logs"))
    assert [row["step"] for row in rows] == [h["step"] for h in want.history]
    assert [row["loss"] for row in rows[6:]] == pytest.approx([h["loss"] for h in resumed.history])
    assert [h["example_ids"] for h in resumed.history] == [h["example_ids"] for h in want.history[6:]]
    for got, ref in zip(_params(resumed.state), _params(want.state), strict=True):
        np.testing.assert_array_equal(got, ref)
    assert eval_entropies(run_dir) == eval_entropies(want_dir)


def test_should_stop_checkpoints_then_resume_is_bit_exact(uninterrupted, tmp_path):
    """A graceful stop (Ctrl-C in `ringjax train`) after step 8 saves step 8; the resumed run ends bit-identical, and
    the stop checkpoint records no evaluation, so the entropy pick sees the same candidates."""
    want, want_dir = uninterrupted
    run_dir = str(tmp_path / "run")
    steps = []
    stopped = train_sft(_model(), TRAIN, CFG, run_dir, eval_examples=EVAL, on_step=lambda s, m: steps.append(s),
                        should_stop=lambda: len(steps) == 7)  # checked after step 8, before its on_step
    assert stopped.stopped and int(stopped.state.step) == 8 and steps == list(range(1, 9))
    assert sorted(int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.isdigit()) == [6, 8]
    resumed = train_sft(_model(), TRAIN, CFG, run_dir, eval_examples=EVAL)
    assert not resumed.stopped and [h["step"] for h in resumed.history] == list(range(9, 20))
    for got, ref in zip(_params(resumed.state), _params(want.state), strict=True):
        np.testing.assert_array_equal(got, ref)
    assert eval_entropies(run_dir) == {**eval_entropies(want_dir), 8: None}
    assert pick_checkpoint(run_dir, (0.0, 100.0)) == pick_checkpoint(want_dir, (0.0, 100.0))


def test_resume_refuses_another_dataset(uninterrupted):
    _, run_dir = uninterrupted
    with pytest.raises(ValueError, match="cannot resume .* step 19"):
        train_sft(_model(), TRAIN[:-3], CFG, run_dir, eval_examples=EVAL)


@pytest.fixture
def fabricated(tmp_path):
    """A run folder with checkpoints 10-40 (entropy in their `eval` extra) and 50 (entropy only in the eval log)."""
    run_dir = str(tmp_path / "fake")
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), every=10, keep=10, meta={"run": "fake"})
    for step, entropy in ((10, 0.7), (20, 0.45), (30, 0.35), (40, 0.2)):
        ckpt.save(step, {"x": np.zeros(2)}, extras={"eval": {"entropy": entropy, "nll": 1.0}})
    ckpt.save(50, {"x": np.zeros(2)}, extras={})
    ckpt.wait()
    ckpt.close()
    writer = MetricsWriter(os.path.join(run_dir, "logs", "eval"), prefix="eval")
    writer.write(50, {"entropy": 0.31})
    writer.write(60, {"entropy": 0.4})  # no checkpoint 60: never picked
    writer.close()
    return run_dir


def test_pick_checkpoint_takes_the_latest_in_band(fabricated):
    assert pick_checkpoint(fabricated) == (50, pytest.approx(0.31))
    assert pick_checkpoint(fabricated, (0.34, 0.5)) == (30, pytest.approx(0.35))
    assert pick_checkpoint(fabricated, (0.5, 1.0)) == (10, pytest.approx(0.7))
    with pytest.raises(ValueError, match=r"\[0\.0, 0\.1\].*step 10: 0\.7000.*step 40: 0\.2000.*step 50: 0\.3100"):
        pick_checkpoint(fabricated, (0.0, 0.1))
    with pytest.raises(ValueError, match="lo <= hi"):
        pick_checkpoint(fabricated, (0.5, 0.3))


def test_cli_pick_checkpoint(fabricated, tmp_path, capsys):
    assert main(["pick-checkpoint", fabricated, "--band", "0.34", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"step": 30, "entropy": pytest.approx(0.35), "path": os.path.join(fabricated, "checkpoints", "30")}
    assert main(["pick-checkpoint", fabricated, "--band", "0", "0.1"]) == 2
    assert "step 20: 0.4500" in capsys.readouterr().err
    assert main(["pick-checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_read_sft_jsonl_skips_and_counts_bad_rows(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = [{"prompt": "ab", "response": "c"}, "not json", {"prompt": "x"}, {"prompt": 1, "response": "y"},
            {"prompt": "", "response": "z"}, {"prompt": "d", "response": "ef", "id": "row-6"}, [1, 2]]
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n\n")
    examples, bad = read_sft_jsonl(str(path), lambda s: [ord(c) for c in s])
    assert bad == 5 and [(x.prompt, x.response, x.id) for x in examples] == [
        ((97, 98), (99,), 1), ((100,), (101, 102), "row-6")]
    path.write_text('{"prompt": "only"}\n')
    with pytest.raises(ValueError, match="sft.jsonl: no usable row"):
        read_sft_jsonl(str(path), lambda s: [ord(c) for c in s])


@pytest.mark.parametrize("change, culprit", [
    ({"epochs": None}, "exactly one of sft.steps=None and sft.epochs=None"),
    ({"steps": 5}, "exactly one of sft.steps=5 and sft.epochs=3"),
    ({"batch_size": 0}, "sft.batch_size=0"),
    ({"seq_len": 1}, "sft.seq_len=1"),
    ({"checkpoint_every": -1}, "sft.checkpoint_every=-1"),
    ({"epochs": None, "steps": 10, "optim": ring_lite_sft_optim(12)},
     "sft.optim.total_steps=12 differs from the run's 10 steps"),
])
def test_bad_config_names_the_value(change, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
        SFTConfig(**{**CFG.__dict__, **change})


def test_no_usable_example_is_an_error():
    with pytest.raises(ValueError, match="2 longer than sft.seq_len=32, 1 empty"):
        train_sft(_model(), [TRAIN[5], TRAIN[6], TRAIN[17]], CFG)
