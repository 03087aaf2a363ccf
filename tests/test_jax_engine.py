"""The embedded JAX engine: continuous batching must give exactly what the static sampler / full forward give.

Greedy outputs are checked teacher-forced against the model's full forward (tests/numerics.py `assert_greedy`):
each token an argmax and each log-prob equal, up to float32 rounding, so that a near-tie, which two code paths may
break differently, cannot fail a test on another CPU. Same-path comparisons stay exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_model

import ringjax
from ringjax.generate import greedy
from numerics import assert_greedy, model_logprob_tol
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.weights import flat_weights
from rollout.types import Request, SamplingParams

N = 10


@pytest.fixture(scope="module")
def model():
    return random_model(ringjax.preset("tiny-v2"), seed=0)


def _prompts(vocab, lens, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, vocab, size=n).astype(np.int32) for n in lens]


def _greedy_ref(model, prompts, n=N):
    width = max(len(p) for p in prompts)
    arr = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        arr[i, :len(p)] = p
    out = greedy(model, jnp.asarray(arr), jnp.asarray([len(p) for p in prompts]), n)
    return np.asarray(out.tokens), np.asarray(out.logprobs)


def _greedy_requests(prompts, n=N, **kw):
    return [Request(f"r{i}", p, SamplingParams(temperature=0.0, max_tokens=n, **kw)) for i, p in enumerate(prompts)]


def test_continuous_batching_matches_static_greedy(model):
    """7 requests through 3 slots (refilled as they free up), odd chunk length: greedy tokens and their log-probs."""
    prompts = _prompts(model.config.vocab_size, [5, 9, 3, 12, 7, 1, 4])
    engine = JaxEngine(model, slots=3, max_context=64, decode_chunk=3)
    out = run_to_completion(engine, _greedy_requests(prompts))
    for i in range(len(prompts)):
        o = out[f"r{i}"]
        assert o.finish == "length" and len(o.tokens) == N
        np.testing.assert_array_equal(o.versions, 0)
    assert_greedy(model, prompts, [out[f"r{i}"].tokens for i in range(len(prompts))],
                  [out[f"r{i}"].logprobs for i in range(len(prompts))])
    assert engine.stats["prefilled"] == len(prompts) and engine.num_pending() == 0


def test_a_freed_slot_is_refilled_before_the_batch_ends(model):
    """Two slots: one long request and three short ones; the short ones all finish while the long one runs."""
    prompts = _prompts(model.config.vocab_size, [4, 4, 4, 4], seed=1)
    engine = JaxEngine(model, slots=2, max_context=64, decode_chunk=2)
    reqs = [Request("long", prompts[0], SamplingParams(temperature=0.0, max_tokens=40))]
    reqs += [Request(f"s{i}", p, SamplingParams(temperature=0.0, max_tokens=2)) for i, p in enumerate(prompts[1:])]
    engine.submit(reqs)
    order = []
    while engine.num_pending():
        order += [o.id for o in engine.step()]
    assert order[-1] == "long" and sorted(order[:-1]) == ["s0", "s1", "s2"]


def test_sampled_logprobs_match_the_trainer_scoring(model):
    """Temperature / top-p rows: logp_infer equals the model's own token_logprobs at that temperature."""
    prompts = _prompts(model.config.vocab_size, [6, 3, 8, 5], seed=2)
    settings = [(1.0, 1.0), (0.7, 1.0), (0.7, 0.8), (1.3, 0.5)]
    engine = JaxEngine(model, slots=4, max_context=64, decode_chunk=4, seed=3)
    reqs = [Request(f"r{i}", p, SamplingParams(temperature=t, top_p=tp, max_tokens=N))
            for i, (p, (t, tp)) in enumerate(zip(prompts, settings))]
    out = run_to_completion(engine, reqs)
    for i, (p, (t, _)) in enumerate(zip(prompts, settings)):
        seq = np.concatenate([p, out[f"r{i}"].tokens])[None]
        logp, _ = model.token_logprobs(jnp.asarray(seq), temperature=t)
        # two float32 computations of a log-prob, logits scaled by 1 / T (numerics.logprob_tol): ~4e-3 at T = 0.7
        tol = model_logprob_tol(model, seq.shape[1], t)
        np.testing.assert_allclose(out[f"r{i}"].logprobs, np.asarray(logp)[0, len(p) - 1:], atol=tol)


def test_continuation_resumes_the_same_response(model):
    prompts = _prompts(model.config.vocab_size, [7, 2], seed=4)
    tokens, _ = _greedy_ref(model, prompts)  # any greedy prefix
    engine = JaxEngine(model, slots=2, max_context=64, decode_chunk=4)
    reqs = [Request(f"c{i}", p, SamplingParams(temperature=0.0, max_tokens=N), generated=tokens[i, :k])
            for i, (p, k) in enumerate(zip(prompts, (4, 9)))]
    out = run_to_completion(engine, reqs)
    assert [len(out[f"c{i}"].tokens) for i in range(2)] == [N - 4, N - 9]
    # the continuation is the greedy continuation of prompt + the tokens generated so far
    assert_greedy(model, [np.concatenate([p, tokens[i, :k]]) for i, (p, k) in enumerate(zip(prompts, (4, 9)))],
                  [out[f"c{i}"].tokens for i in range(2)], [out[f"c{i}"].logprobs for i in range(2)])


def test_stop_ids_end_a_response_and_are_kept(model):
    """The stop id is taken from the same engine's own run without one (same path: exact comparison)."""
    prompts = _prompts(model.config.vocab_size, [5], seed=5)
    tokens = run_to_completion(JaxEngine(model, slots=2, max_context=64), _greedy_requests(prompts))["r0"].tokens
    stop = int(tokens[3])
    first = int(np.argmax(tokens == stop))
    out = run_to_completion(JaxEngine(model, slots=2, max_context=64), _greedy_requests(prompts, stop_ids=(stop,)))
    assert out["r0"].finish == "stop"
    np.testing.assert_array_equal(out["r0"].tokens, tokens[:first + 1])


def test_bad_requests_are_answered_with_errors_and_the_rest_runs(model):
    prompts = _prompts(model.config.vocab_size, [5, 60], seed=6)
    engine = JaxEngine(model, slots=2, max_context=64)
    reqs = [Request("empty", np.zeros((0,), np.int32), SamplingParams(max_tokens=4)),
            Request("long", prompts[1], SamplingParams(max_tokens=8)),
            Request("ok", prompts[0], SamplingParams(max_tokens=4))]
    out = run_to_completion(engine, reqs)
    assert out["empty"].finish == "error" and "empty prompt" in out["empty"].error
    assert out["long"].finish == "error" and "exceeds the engine's context of 64" in out["long"].error
    assert out["ok"].finish == "length" and len(out["ok"].tokens) == 4
    assert engine.stats["rejected"] == 2


def test_abort_returns_partial_responses(model):
    prompts = _prompts(model.config.vocab_size, [5, 6, 7], seed=7)
    engine = JaxEngine(model, slots=2, max_context=64, decode_chunk=4)
    engine.submit(_greedy_requests(prompts, n=30))
    assert engine.step() == []
    out = {o.id: o for o in engine.abort()}
    assert {o.finish for o in out.values()} == {"abort"} and set(out) == {"r0", "r1", "r2"}
    assert len(out["r0"].tokens) == 4 and len(out["r2"].tokens) == 0  # r2 was still queued
    assert_greedy(model, prompts[:1], [out["r0"].tokens], [out["r0"].logprobs])
    assert engine.num_pending() == 0


def test_update_weights_swaps_the_policy_and_tags_versions(model):
    other = random_model(model.config, seed=1)
    prompts = _prompts(model.config.vocab_size, [5, 8], seed=8)
    engine = JaxEngine(model, slots=2, max_context=64)
    engine.update_weights(flat_weights(other), version=7)
    out = run_to_completion(engine, _greedy_requests(prompts))
    for i in range(2):
        np.testing.assert_array_equal(out[f"r{i}"].versions, 7)
    # greedy under the new weights (the old ones' tokens are far from their argmax: checked sharp below)
    assert_greedy(other, prompts, [out[f"r{i}"].tokens for i in range(2)], [out[f"r{i}"].logprobs for i in range(2)])
    with pytest.raises(AssertionError):
        assert_greedy(model, prompts, [out[f"r{i}"].tokens for i in range(2)])
    engine.update_weights(nnx_state(model), version=8)  # in-place form: the live state, no copy
    assert engine.version == 8
    bad = flat_weights(other)
    key = next(iter(bad))
    bad[key] = np.zeros((3,), np.float32)
    with pytest.raises(ValueError, match=key):
        engine.update_weights(bad, version=9)


def nnx_state(model):
    from flax import nnx
    return nnx.state(model)


def test_sharded_engine_matches_unsharded():
    cfg = ringjax.preset("tiny-v2")
    prompts = _prompts(cfg.vocab_size, [7, 3, 5, 1, 6, 2, 4, 7, 3], seed=9)
    mesh = ringjax.make_mesh(data=2, expert=4)
    with jax.set_mesh(mesh):
        sharded = ringjax.create_model(cfg, mesh, seed=0)
    got = run_to_completion(JaxEngine(sharded, slots=8, max_context=64, mesh=mesh), _greedy_requests(prompts))
    # greedy decoding of the unsharded model, teacher-forced through its full forward
    assert_greedy(ringjax.create_model(cfg, seed=0), prompts, [got[f"r{i}"].tokens for i in range(len(prompts))],
                  [got[f"r{i}"].logprobs for i in range(len(prompts))])
    with pytest.raises(ValueError, match="slots=3"):
        JaxEngine(sharded, slots=3, max_context=64, mesh=mesh)


def test_engine_on_a_context_mesh_splits_rows_and_matches_unsharded():
    """On a trainer mesh with a context axis the engine decodes whole rows, split over fsdp x context (one token
    per row and step cannot be split), so its slots must divide both."""
    cfg = ringjax.preset("tiny-v2")
    prompts = _prompts(cfg.vocab_size, [7, 3, 5, 1, 6, 2, 4, 7, 3], seed=9)
    mesh = ringjax.make_mesh(fsdp=2, context=4)
    with jax.set_mesh(mesh):
        sharded = ringjax.create_model(cfg, mesh, seed=0)
    engine = JaxEngine(sharded, slots=8, max_context=64, mesh=mesh)
    got = run_to_completion(engine, _greedy_requests(prompts))
    assert engine._cache["dense"]["k"].sharding.spec[1] == ("fsdp", "context")  # [L, B, K, G, D]: rows split
    assert_greedy(ringjax.create_model(cfg, seed=0), prompts, [got[f"r{i}"].tokens for i in range(len(prompts))],
                  [got[f"r{i}"].logprobs for i in range(len(prompts))])
    with pytest.raises(ValueError, match=r"slots=4 is not divisible by the mesh's 8 batch shards \(its batch axes "
                                         r"and context"):
        JaxEngine(sharded, slots=4, max_context=64, mesh=mesh)
