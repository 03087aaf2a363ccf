"""Zero-mismatch mode: the engine's log-probs equal, bit for bit, the trainer's jitted recomputation of its tokens."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ringjax
from ringjax.config_io import load_config
from ringjax.data import PromptRecord
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.c3po import Response, StepBatch, pack_micro_batches
from ringjax.trainer.rl import RLConfig, train_rl
from ringjax.trainer.step import make_score_fn
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.types import Request, SamplingParams

TEMPERATURE = 0.8
PROMPT_LENS = [3, 11, 1, 7, 14, 5]  # 6 requests on 4 slots: two slots are refilled mid-run
MAX_TOKENS = 9
WIDTH = 24  # the engine's context = the trainer's seq_len
ROWS = 2  # the trainer's micro-batch rows


@pytest.fixture(scope="module")
def model():
    return ringjax.create_model(ringjax.preset("tiny-v2"), seed=0)


def _requests(vocab):
    rng = np.random.default_rng(0)
    sampling = SamplingParams(TEMPERATURE, 0.95, MAX_TOKENS, stop_ids=(7, 11))  # some stop early, some run out
    return [Request(f"r{i}", rng.integers(2, vocab, n), sampling) for i, n in enumerate(PROMPT_LENS)]


def _generate(model, **engine_kw):
    requests = _requests(model.config.vocab_size)
    engine = JaxEngine(model, slots=4, max_context=WIDTH, decode_chunk=3, seed=1, **engine_kw)
    out = run_to_completion(engine, requests)
    return [(r.prompt, out[r.id]) for r in requests]


def _trainer_logp(model, outputs):
    """The engine's log-probs and the trainer's recomputation of the same tokens: packed as `train_rl` packs them in
    zero-mismatch mode, scored by the jitted lax.map of `sequence_logprobs` the train step runs for logp_old."""
    responses = [Response(i, prompt, o.tokens, o.logprobs, 0.0, 0.0) for i, (prompt, o) in enumerate(outputs)]
    step = StepBatch(tuple(responses), sum(len(r) for r in responses), 0)
    host = stack_micro_batches(pack_micro_batches(step, ROWS, WIDTH, packed=False), "token_mean", step.phi)
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    old = np.asarray(make_score_fn(graphdef, TEMPERATURE)(params, frozen, batch))
    mask = host["loss_mask"]
    return host["logp_infer"][mask], old[mask]


def test_engine_logprobs_equal_the_trainers_bit_for_bit(model):
    outputs = _generate(model, zero_mismatch=True, zero_mismatch_rows=ROWS)
    assert {o.finish for _, o in outputs} == {"stop", "length"}
    assert all(len(o.routes) == len(o.tokens) for _, o in outputs)
    infer, old = _trainer_logp(model, outputs)
    assert len(infer) == sum(len(o.tokens) for _, o in outputs) > 30
    assert np.array_equal(infer, old)  # bit for bit: k = pi_old / pi_infer == 1 exactly


def test_the_normal_engine_is_not_bit_equal(model):
    """The same requests through the KV-cache decode: close, but not the trainer's bits (the check can fail)."""
    infer, old = _trainer_logp(model, _generate(model))
    np.testing.assert_allclose(infer, old, atol=1e-4)
    assert not np.array_equal(infer, old)


def test_mixed_temperatures_are_refused(model):
    engine = JaxEngine(model, slots=2, max_context=WIDTH, zero_mismatch=True)
    engine.submit([Request("a", [3, 4], SamplingParams(1.0, max_tokens=2)),
                   Request("b", [5, 6], SamplingParams(0.5, max_tokens=2))])
    with pytest.raises(ValueError, match="different temperatures"):
        engine.step()


CFG = load_config(RLConfig, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                         "tiny_rl.yaml"), ["steps=2", "checkpoint_every=0", "leftover=drop",
                                                           "rollout.zero_mismatch=true"])


def test_train_rl_logs_zero_mismatch():
    """Two IcePop steps of `configs/tiny_rl.yaml` (8 engine slots, 4 trainer rows): every trained token was sampled
    by the policy being trained (leftovers dropped), so logp_old - logp_infer is exactly 0 on all of them."""
    assert CFG.loss.correction == "icepop" and CFG.rows != CFG.omega
    records = [PromptRecord(id=f"p{i}", prompt=f"What is {i} + {i}?", domain="math", answer=str(2 * i))
               for i in range(4)]
    result = train_rl(ringjax.create_model(ringjax.preset("tiny-v2"), seed=0), records, lambda r, t: len(t) / 12, CFG)
    assert [h["step"] for h in result.history] == [1, 2]
    for h in result.history:
        assert h["tokens"] == CFG.phi
        assert h["logp_diff_max"] == 0.0 and h["icepop_masked_frac"] == 0.0


@pytest.mark.parametrize("change, culprit", [
    ({"engine": "sglang"}, "rl.rollout.engine='sglang'"),
    ({"workers": 2}, "rl.rollout.workers=2"),
])
def test_conditions_the_mode_cannot_meet_are_refused(change, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
        dataclasses.replace(CFG, rollout=dataclasses.replace(CFG.rollout, **change))


def test_router_replay_is_refused():
    with pytest.raises(ValueError, match=r"rl\.router_replay='replay'"):
        dataclasses.replace(CFG, router_replay="replay")


def test_the_window_must_hold_the_response(model):
    from rollout.zero_mismatch import zero_mismatch_decode
    graphdef, state = nnx.split(model)
    with pytest.raises(ValueError, match="more than the window of 8"):
        zero_mismatch_decode(graphdef, state, [np.arange(1, 6)], 8, 1, np.array([4]), np.ones(1, np.float32),
                             np.ones(1, np.float32), np.full((1, 1), -1), jax.random.key(0), 2)


def test_bench_smoke(tmp_path):
    """benchmarks/zero_mismatch_bench.py end to end at minimal sizes: both modes timed, zero-mismatch bit-equal."""
    import importlib.util
    import json
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.join(root, "benchmarks") not in sys.path:
        sys.path.append(os.path.join(root, "benchmarks"))  # as when run as a script: the shared _summary module
    spec = importlib.util.spec_from_file_location("zero_mismatch_bench", os.path.join(root, "benchmarks",
                                                                                      "zero_mismatch_bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "zm.json"
    summary = bench.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["table"] == summary["table"]
    assert [r["mode"] for r in summary["results"]] == ["normal", "zero_mismatch"]
    assert all(r["gen_tok_per_s"] > 0 for r in summary["results"])
    assert summary["table"]["W8"]["bit_equal"]["zero_mismatch"] is True  # normal mode: see the test above
