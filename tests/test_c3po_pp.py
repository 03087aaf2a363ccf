"""C3PO++ scheduler over the real embedded JAX engine: budget, carry-over, retention, accounting, resume."""

import itertools
import json
import time

import numpy as np
import pytest
from helpers import random_model
from numerics import assert_greedy

import ringjax
from ringjax.data import PromptRecord
from ringjax.data.tokenize import ByteTokenizer
from rollout.c3po_pp import C3POPlusPlus, C3POPPConfig
from rollout.jax_engine import JaxEngine
from rollout.rewards import RewardPool
from rollout.types import SamplingParams

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def model():
    return random_model(ringjax.preset("tiny-v2"), seed=0)


def _source(vocab, n=200, seed=0, lens=(3, 9)):
    rng = np.random.default_rng(seed)
    for i in range(n):
        ids = rng.integers(2, vocab, size=int(rng.integers(*lens))).tolist()
        yield PromptRecord(id=f"p{i}", prompt=f"prompt {i}", domain="math", answer="0"), ids


def _reward(record, text):
    data = np.frombuffer(text.encode(), np.uint8)
    return float(np.mean(data % 2 == 0)) if len(data) else 0.0


def _stop_ids(vocab, k=16):
    """16 stop ids: with random weights about 1 in 30 tokens stops, so lengths spread over 1..MAX_TOKENS."""
    return tuple(range(2, 2 + k)) if vocab > 2 + k else (2,)


def _sched(model, cfg, temperature=1.0, source=None, reward=_reward, timeout_s=60.0):
    sampling = SamplingParams(temperature=temperature, max_tokens=MAX_TOKENS,
                              stop_ids=_stop_ids(model.config.vocab_size))
    return C3POPlusPlus(cfg, sampling, source or _source(model.config.vocab_size),
                        RewardPool(reward, workers=2, timeout_s=timeout_s), ByteTokenizer().decode_bytes)


def _accounted(s: C3POPlusPlus) -> int:
    st = s.stats
    return st["completed_groups"] + len(s.groups) + st["dropped_groups"] + st["failed_groups"]


def test_budget_carry_over_and_mixed_versions(model):
    cfg = C3POPPConfig(phi=60, omega=8, sigma=4, samples=2)
    s, engine = _sched(model, cfg), JaxEngine(model, slots=8, max_context=64, decode_chunk=4, seed=1)
    versions = set()
    for it in range(4):
        engine.update_weights(engine.state, version=it)  # a new policy version per iteration
        done = s.run_iteration(engine)
        tokens = sum(g.group.response_tokens() for g in done)
        assert cfg.phi <= tokens < cfg.phi + cfg.omega * MAX_TOKENS  # overshoot: at most one engine step's worth
        for f in done:
            assert len(f.rewards) == 2 and all(m.done for m in f.group.members)
            for m in f.group.members:
                assert len(m.tokens) == len(m.logprobs) == len(m.versions) <= MAX_TOKENS
                assert m.versions == sorted(m.versions) and f.group.born <= m.versions[0] <= it
                versions.add(len(set(m.versions)))
        assert _accounted(s) == s.stats["groups_started"]
        assert len(s.groups) * 2 <= cfg.omega
    assert s.stats["resubmitted"] > 0 and max(versions) > 1  # some response spans two policy versions


def test_split_greedy_responses_equal_uninterrupted_ones(model):
    """Temperature 0, one policy: a response generated over several iterations is the one-shot greedy response,
    checked teacher-forced (tests/numerics.py): every token the argmax of the full forward over the prompt and the
    response so far, up to a float32 near-tie, with its log-prob; it ends at the first stop id or at the limit."""
    cfg = C3POPPConfig(phi=30, omega=6, sigma=10, samples=1)
    source = list(itertools.islice(_source(model.config.vocab_size, seed=3), 60))
    s = _sched(model, cfg, temperature=0.0, source=iter(source))
    engine = JaxEngine(model, slots=6, max_context=64, decode_chunk=3)
    finished = [f for _ in range(5) for f in s.run_iteration(engine)]
    assert s.stats["resubmitted"] > 0
    prompts = {r.id: ids for r, ids in source}
    stops = set(_stop_ids(model.config.vocab_size))
    members = [f.group.members[0] for f in finished]
    for m in members:
        assert len(m.tokens) == MAX_TOKENS or m.tokens[-1] in stops
        assert not stops & set(m.tokens[:-1])
    assert_greedy(model, [prompts[f.group.record.id] for f in finished], [m.tokens for m in members],
                  [m.logprobs for m in members])


def test_sigma_drops_rollouts_that_span_too_many_iterations(model):
    cfg = C3POPPConfig(phi=20, omega=8, sigma=1, samples=2)
    s, engine = _sched(model, cfg), JaxEngine(model, slots=8, max_context=64, decode_chunk=4, seed=2)
    s.run_iteration(engine)
    carried = list(s.groups.values())
    assert carried, "the budget should end the iteration with unfinished groups"
    tokens = sum(g.response_tokens() for g in carried)
    s.run_iteration(engine)
    assert s.stats["dropped_groups"] == len(carried) and s.stats["dropped_tokens"] >= tokens
    assert s.stats["resubmitted"] == 0 and _accounted(s) == s.stats["groups_started"]


def test_sync_mode_waits_for_every_response_of_a_batch(model):
    cfg = C3POPPConfig(phi=40, omega=8, sigma=1, samples=2, mode="sync")
    s, engine = _sched(model, cfg), JaxEngine(model, slots=8, max_context=64, decode_chunk=4, seed=4)
    for _ in range(2):
        done = s.run_iteration(engine)
        assert not s.groups and len(done) % (cfg.omega // cfg.samples) == 0
    assert s.stats["dropped_groups"] == 0 and s.stats["resubmitted"] == 0


def test_state_dict_resume_continues_the_same_partial_rollouts(model):
    cfg = C3POPPConfig(phi=40, omega=8, sigma=3, samples=2)
    vocab = model.config.vocab_size
    a, engine = _sched(model, cfg), JaxEngine(model, slots=8, max_context=64, decode_chunk=4)
    engine.reseed(10)
    a.run_iteration(engine)
    state = json.loads(json.dumps(a.state_dict()))
    assert state["groups"]
    engine.reseed(11)
    want = a.run_iteration(engine)
    consumed = state["stats"]["groups_started"]
    b = _sched(model, cfg, source=itertools.islice(_source(vocab), consumed, None))
    b.load_state_dict(state)
    fresh = JaxEngine(model, slots=8, max_context=64, decode_chunk=4)
    fresh.reseed(11)
    got = b.run_iteration(fresh)
    assert [f.group.id for f in got] == [f.group.id for f in want]
    for f, g in zip(got, want):
        assert f.rewards == g.rewards
        for m, n in zip(f.group.members, g.group.members):
            assert m.tokens == n.tokens and m.versions == n.versions
            np.testing.assert_allclose(m.logprobs, n.logprobs, atol=1e-6)


def test_bad_prompts_and_reward_failures_are_counted_and_the_run_goes_on(model):
    vocab = model.config.vocab_size
    good = list(itertools.islice(_source(vocab, seed=5), 30))
    bad = [(PromptRecord(id="empty", prompt="", domain="math", answer="0"), []),
           (PromptRecord(id="long", prompt="x", domain="math", answer="0"), list(range(2, 62)))]
    source = iter(bad + good)

    def reward(record, tokens):
        if record.id == "p0":
            raise RuntimeError("verifier crashed")
        if record.id == "p1":
            time.sleep(3)
        return 1.0

    cfg = C3POPPConfig(phi=40, omega=8, sigma=3, samples=2)
    s = _sched(model, cfg, source=source, reward=reward, timeout_s=1.0)
    engine = JaxEngine(model, slots=8, max_context=64, decode_chunk=4)
    done = [f for _ in range(3) for f in s.run_iteration(engine)]
    assert s.stats["failed_groups"] == 2
    assert any("empty prompt" in e for e in s.errors) and any("exceeds the engine's context" in e for e in s.errors)
    by_prompt = {f.group.record.id: f.rewards for f in done}
    assert by_prompt["p0"] == [0.0, 0.0] and s.rewards.stats["errors"] == 2
    assert by_prompt["p1"] == [0.0, 0.0] and s.rewards.stats["timeouts"] == 2
    assert any(r == [1.0, 1.0] for r in by_prompt.values())
    assert _accounted(s) == s.stats["groups_started"]
    s.rewards.close()


def test_a_setup_where_every_request_fails_stops_with_the_reason(model):
    cfg = C3POPPConfig(phi=40, omega=8, sigma=3, samples=2)
    s = _sched(model, cfg)
    with pytest.raises(RuntimeError, match="failed in a row.*exceeds the engine's context"):
        s.run_iteration(JaxEngine(model, slots=8, max_context=MAX_TOKENS + 2))


def test_keep_kv_continues_in_the_engine_without_a_second_prefill(model):
    """carry_kv="keep": an unfinished response stays in its engine slot across iterations (never re-prefilled:
    one prefill per response), and under one policy at temperature 0 it is the one-shot greedy response."""
    cfg = C3POPPConfig(phi=30, omega=6, sigma=10, samples=1, carry_kv="keep")
    source = list(itertools.islice(_source(model.config.vocab_size, seed=3), 60))
    s = _sched(model, cfg, temperature=0.0, source=iter(source))
    engine = JaxEngine(model, slots=6, max_context=64, decode_chunk=3)
    finished = [f for _ in range(5) for f in s.run_iteration(engine)]
    assert s.stats["kept"] > 0 and s.stats["resubmitted"] == 0
    assert engine.stats["prefilled"] == s.stats["groups_started"] and engine.stats["aborted"] == 0
    assert engine.num_pending() == len(s.held) > 0  # still running, waiting for the next iteration
    prompts = {r.id: ids for r, ids in source}
    members = [f.group.members[0] for f in finished]
    assert_greedy(model, [prompts[f.group.record.id] for f in finished], [m.tokens for m in members],
                  [m.logprobs for m in members])


def test_keep_kv_responses_span_versions_and_sigma_aborts_them_in_the_engine(model):
    """Kept responses continue under each new policy version (their later tokens carry it); a group that spans
    sigma iterations is aborted in the engine and its partial tokens are counted as dropped."""
    cfg = C3POPPConfig(phi=60, omega=8, sigma=2, samples=2, carry_kv="keep")
    s, engine = _sched(model, cfg), JaxEngine(model, slots=8, max_context=64, decode_chunk=4, seed=1)
    spans = set()
    for it in range(5):
        engine.update_weights(engine.state, version=it)
        for f in s.run_iteration(engine):
            for m in f.group.members:
                assert m.versions == sorted(m.versions) and it - f.group.born < cfg.sigma
                spans.add(len(set(m.versions)))
        assert _accounted(s) == s.stats["groups_started"]
        assert engine.num_pending() == len(s.held)  # the engine holds exactly the responses carried over
    assert max(spans) > 1 and s.stats["kept"] > 0 and s.stats["resubmitted"] == 0
    assert s.stats["dropped_groups"] > 0 and engine.stats["aborted"] > 0


def test_keep_kv_state_dict_saves_the_tokens_held_in_the_engine(model):
    """A checkpoint of a keep-run reads the held responses' tokens from the engine (`peek`) without stopping them;
    a resumed scheduler re-submits them (re-prefilled) and, greedy under one policy, finishes them identically."""
    cfg = C3POPPConfig(phi=30, omega=6, sigma=10, samples=1, carry_kv="keep")
    vocab = model.config.vocab_size
    source = list(itertools.islice(_source(vocab, seed=3), 60))
    a, engine = _sched(model, cfg, temperature=0.0, source=iter(source)), JaxEngine(model, slots=6, max_context=64,
                                                                                   decode_chunk=3)
    a.run_iteration(engine)
    with pytest.raises(RuntimeError, match="held in the engine"):
        a.state_dict()
    state = json.loads(json.dumps(a.state_dict(engine)))
    held = {m["id"]: m for g in state["groups"] for m in g["members"] if m["id"] in a.held}
    assert held and any(m["tokens"] for m in held.values())
    live = {m.id: m for g in a.groups.values() for m in g.members}
    assert all(len(live[i].tokens) < len(m["tokens"]) or not m["tokens"] for i, m in held.items())  # copies only
    want = [f for _ in range(3) for f in a.run_iteration(engine)]
    b = _sched(model, cfg, temperature=0.0, source=iter(source[state["stats"]["groups_started"]:]))
    b.load_state_dict(state)
    fresh = JaxEngine(model, slots=6, max_context=64, decode_chunk=3)
    got = [f for _ in range(3) for f in b.run_iteration(fresh)]
    assert b.stats["resubmitted"] == len(held)
    n = min(len(got), len(want))
    assert n > 0 and [f.group.id for f in got[:n]] == [f.group.id for f in want[:n]]
    for f, g in zip(got[:n], want[:n]):
        assert f.group.members[0].tokens == g.group.members[0].tokens


def test_keep_kv_needs_c3po_pp_and_the_engine_in_this_process():
    from rollout.config import RolloutConfig

    with pytest.raises(ValueError, match="carry_kv=keep needs rollout.mode=c3po\\+\\+"):
        C3POPPConfig(mode="sync", carry_kv="keep")
    with pytest.raises(ValueError, match="carry_kv='reuse'"):
        RolloutConfig(carry_kv="reuse")
    for kwargs, culprit in (({"mode": "sync"}, "rollout.mode='sync'"), ({"workers": 1}, "rollout.workers=1"),
                            ({"engine": "sglang"}, "rollout.engine='sglang'"),
                            ({"zero_mismatch": True}, "rollout.zero_mismatch")):
        with pytest.raises(ValueError, match=culprit):
            RolloutConfig(**{"mode": "c3po++", "carry_kv": "keep", **kwargs})
