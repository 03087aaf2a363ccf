"""Routing records and router replay (R3): the engine's expert ids per token and MoE layer, how they travel (outputs,
responses, micro-batches, checkpoints), the trainer replaying them exactly (also under expert parallelism), the
routing-disagreement and policy-lag diagnostics, and bad records dropped and counted."""

import collections
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ringjax
from ringjax.config_io import load_config
from ringjax.data import PromptRecord
from ringjax.losses import LossConfig
from ringjax.model.routing import route
from ringjax.sharding import make_mesh, state_shardings
from ringjax.trainer import diagnostics
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.c3po import Response, StepBatch, pack_micro_batches, split_response
from ringjax.trainer.rl import RLConfig, train_rl
from ringjax.trainer.rollout_io import decode_pool, encode_pool, to_responses
from ringjax.trainer.step import sequence_logprobs
from rollout import routes
from rollout.c3po_pp import Finished, Group, Member
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.types import Request, SamplingParams

CFG = ringjax.preset("tiny-v2")  # 2 MoE layers, 8 experts, top-2 (one dense layer first)


@pytest.fixture(scope="module")
def model():
    return ringjax.create_model(CFG, seed=0)


@pytest.fixture(scope="module")
def rollouts(model):
    """Three sampled responses of different prompt lengths from the embedded engine (float32, default numerics)."""
    engine = JaxEngine(model, slots=4, max_context=48, decode_chunk=4, seed=1)
    rng = np.random.default_rng(0)
    reqs = [Request(f"r{i}", rng.integers(1, CFG.vocab_size, size=n), SamplingParams(1.0, 1.0, 10))
            for i, n in enumerate((5, 9, 3))]
    outs = run_to_completion(engine, reqs)
    return [(r.prompt, outs[r.id]) for r in reqs]


def _record(prompt, out):
    return np.concatenate([out.context_routes, out.routes])


def _own_choice(model, tokens):
    """The trainer's own top-k [S L X] for one full sequence."""
    out = model(jnp.asarray(tokens)[None])
    return np.moveaxis(np.asarray(out.aux.experts[:, 0]), 0, 1)


def test_route_replays_ids_with_this_routers_gate_values():
    cfg = ringjax.preset("tiny-v2", n_group=1, topk_group=1)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, cfg.hidden_size)), jnp.float32)
    router = jnp.asarray(rng.normal(size=(cfg.hidden_size, cfg.num_experts)), jnp.float32)
    own = route(x, router, None, cfg)
    replay = jnp.asarray([[0, 5], [7, 1], [-1, 3]], jnp.int32)  # the last row holds an unknown id: routes itself
    got = route(x, router, None, cfg, replay)
    np.testing.assert_array_equal(got.experts, [[0, 5], [7, 1], np.asarray(own.experts[2])])
    np.testing.assert_array_equal(got.chosen, own.chosen)
    scores = np.asarray(jax.nn.sigmoid(x @ router))
    for t, ids in enumerate(np.asarray(got.experts)):
        s = scores[t, ids]
        np.testing.assert_allclose(got.weights[t], s / s.sum() * cfg.routed_scaling_factor, rtol=1e-6)


def test_engine_records_are_the_routing_the_model_computes(model, rollouts):
    agree = []
    for prompt, out in rollouts:
        record = _record(prompt, out)
        assert record.dtype == np.uint8 and out.routes.shape == (len(out.tokens), CFG.num_moe_layers, 2)
        assert routes.record_problem(record, len(prompt) + len(out.tokens) - 1, CFG.num_moe_layers, 2,
                                     CFG.num_experts) is None
        own = _own_choice(model, np.concatenate([prompt, out.tokens]))[:-1]  # the last token is never fed
        agree.append(np.all(np.sort(own, -1) == np.sort(record, -1), axis=-1))
    agree = np.concatenate(agree)
    assert agree.mean() >= 0.99, agree.mean()  # cache vs full forward may flip a float32 near-tie, nothing more


def _step_batch(rollouts, rows=3, seq_len=24):
    responses = [Response(f"p{i}", prompt, out.tokens, out.logprobs, 1.0, 0.5, out.versions,
                          routes=_record(prompt, out))
                 for i, (prompt, out) in enumerate(rollouts)]
    step = StepBatch(tuple(responses), sum(len(r) for r in responses), 0)
    return responses, pack_micro_batches(step, rows, seq_len)


def test_replay_uses_the_engines_experts_and_reproduces_its_logprobs(model, rollouts):
    responses, mbs = _step_batch(rollouts)
    batch = stack_micro_batches(mbs, "token_mean", mbs[0].loss_mask.sum())
    mb = {k: jnp.asarray(v[0]) for k, v in batch.items()}
    out = model(mb["tokens"], mb["positions"], mb["segment_ids"], routes=mb["routes"])
    used = np.moveaxis(np.asarray(out.aux.experts), 0, 2)  # [R S L X]
    known = np.all(batch["routes"][0] >= 0, axis=(-1, -2))
    np.testing.assert_array_equal(used[known], batch["routes"][0][known])  # replay is exact
    logp, _, _ = jax.jit(lambda m, b: sequence_logprobs(m, b, 1.0, True))(model, mb)
    mask = batch["loss_mask"][0]
    np.testing.assert_allclose(np.asarray(logp)[mask], batch["logp_infer"][0][mask], atol=2e-5)


def test_replaying_the_trainers_own_choice_changes_nothing_and_trains_the_router(model):
    tokens = jnp.asarray(np.random.default_rng(3).integers(1, CFG.vocab_size, size=(2, 12)))
    own = jnp.moveaxis(model(tokens).aux.chosen, 0, 2)  # [B S L X]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, replay):
        m = nnx.merge(graphdef, p, rest)
        out = m(tokens, routes=own if replay else None)
        return jnp.mean(m.logits(out.hidden) ** 2)

    (a, ga), (b, gb) = (jax.value_and_grad(loss)(params, r) for r in (False, True))
    assert float(a) == float(b)
    for (path, x), (_, y) in zip(nnx.to_flat_state(ga), nnx.to_flat_state(gb)):
        np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(path))
    assert float(jnp.max(jnp.abs(gb["moe_layers"]["router"][...]))) > 0  # the gate values carry gradient


def test_replay_under_expert_parallelism(model, rollouts):
    _, mbs = _step_batch(rollouts, rows=8)
    batch = stack_micro_batches(mbs, "token_mean", 1.0)
    mb = {k: jnp.asarray(v[0]) for k, v in batch.items()}
    want_out = model(mb["tokens"], mb["positions"], mb["segment_ids"], routes=mb["routes"])
    want = sequence_logprobs(model, mb, 1.0, True)[0]
    mesh = make_mesh(fsdp=2, expert=4)
    graphdef, state = nnx.split(model)
    sharded = nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh)))
    with jax.set_mesh(mesh):
        got_out = jax.jit(lambda m, b: m(b["tokens"], b["positions"], b["segment_ids"], routes=b["routes"]))(
            sharded, mb)
        got = jax.jit(lambda m, b: sequence_logprobs(m, b, 1.0, True)[0])(sharded, mb)
    np.testing.assert_array_equal(np.asarray(got_out.aux.experts), np.asarray(want_out.aux.experts))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)


def test_records_follow_cut_tails_and_micro_batch_positions(rollouts):
    prompt, out = rollouts[1]
    r = Response("p", prompt, out.tokens, out.logprobs, 1.0, 0.0, out.versions, routes=_record(prompt, out))
    head, tail = split_response(r, 4)
    np.testing.assert_array_equal(head.routes, r.routes[:len(prompt) + 3])
    np.testing.assert_array_equal(tail.routes, r.routes)  # the tail's prompt + tokens span the same positions
    (mb,) = pack_micro_batches(StepBatch((head, tail), len(head) + len(tail), 0), 1, 48)
    p0 = len(prompt) + 4  # head sequence length
    np.testing.assert_array_equal(mb.routes[0, :p0 - 1], head.routes)
    assert np.all(mb.routes[0, p0 - 1] == -1)  # the head's last token was not fed within this sequence
    np.testing.assert_array_equal(mb.routes[0, p0:p0 + len(tail.routes)], tail.routes)
    np.testing.assert_array_equal(mb.versions[mb.loss_mask], np.concatenate([head.versions, tail.versions]))
    assert np.all(mb.versions[~mb.loss_mask] == -1)
    with pytest.raises(ValueError, match="routing record of shape"):
        dataclasses.replace(r, routes=r.routes[:-1])


def _finished(rollouts, spoil=None):
    members = []
    prompt = rollouts[0][0]
    for j, (_, out) in enumerate(rollouts[:1] * 3):
        m = Member(f"g/{j}")
        m.extend(out)
        m.done = True
        members.append(m)
    if spoil is not None:
        spoil(members[1])
    return [Finished(Group("g", PromptRecord("p", "q", "math"), prompt.tolist(), 0, members), [1.0, 0.0, 0.5])]


@pytest.mark.parametrize("spoil", [lambda m: setattr(m, "routes", None),
                                   lambda m: setattr(m, "routes", m.routes[1:]),
                                   lambda m: setattr(m, "routes", np.full_like(m.routes, 200))])
def test_bad_records_are_dropped_under_replay_and_counted(rollouts, spoil):
    counts = collections.Counter()
    kept = to_responses(_finished(rollouts, spoil), LossConfig(), CFG, True, counts)
    assert len(kept) == 2 and counts == {"dropped": 1}
    counts = collections.Counter()
    kept = to_responses(_finished(rollouts, spoil), LossConfig(), CFG, False, counts)
    assert len(kept) == 3 and kept[1].routes is None and counts == {"missing": 1}
    assert kept[0].routes is not None


def test_records_survive_checkpoint_json(rollouts):
    pool = to_responses(_finished(rollouts), LossConfig(), CFG)
    back = decode_pool(json.loads(json.dumps(encode_pool(pool))))
    for a, b in zip(pool, back):
        assert b.routes.dtype == a.routes.dtype
        np.testing.assert_array_equal(a.routes, b.routes)
    m = _finished(rollouts)[0].group.members[0]
    row = json.loads(json.dumps(routes.to_json(m.routes)))
    assert isinstance(row["b64"], str)  # bytes, not a JSON list of ids
    np.testing.assert_array_equal(routes.from_json(row), m.routes)


def test_continuation_keeps_the_routing_that_sampled_each_token(rollouts):
    prompt, out = rollouts[0]
    m = Member("x")
    first = dataclasses.replace(out, tokens=out.tokens[:3], logprobs=out.logprobs[:3], versions=out.versions[:3],
                                routes=out.routes[:3])
    rest = dataclasses.replace(out, tokens=out.tokens[3:], logprobs=out.logprobs[3:], versions=out.versions[3:],
                               routes=out.routes[3:], context_routes=np.zeros((len(prompt) + 2, 2, 2), np.uint8))
    m.extend(first)
    m.extend(rest)
    np.testing.assert_array_equal(m.routes, _record(prompt, out))
    m.extend(dataclasses.replace(rest, routes=None))  # a call without routing: the record is unknown from now on
    assert m.routes is None


def test_routing_and_gap_diagnostics_by_hand():
    chosen = jnp.asarray([[[[1, 2], [3, 4], [5, 6]]], [[[0, 1], [2, 3], [4, 5]]]])  # [L=2 R=1 S=3 X=2]
    rec = np.full((1, 3, 2, 2), -1, np.int16)  # [R S L X]
    rec[0, 0] = [[2, 1], [0, 7]]  # layer 0 same set (order differs), layer 1 overlap 1/2
    rec[0, 1] = [[3, 5], [2, 3]]  # layer 0 overlap 1/2, layer 1 same
    mask = jnp.asarray([[True, True]])  # S1 = 2: positions 0 and 1 produce trained tokens
    sums = {k: float(v) for k, v in diagnostics.routing_sums(chosen, jnp.asarray(rec), mask).items()}
    out = diagnostics.finalize(sums)
    assert out["routing_tokens"] == 2
    assert out["routing_disagree_l0"] == 0.5 and out["routing_disagree_l1"] == 0.5
    assert out["routing_overlap_l0"] == 0.75 and out["routing_overlap_l1"] == 0.75
    assert out["routing_disagree"] == 0.5
    rec[0, 1] = -1  # an unknown record is not counted
    sums = {k: float(v) for k, v in diagnostics.routing_sums(chosen, jnp.asarray(rec), mask).items()}
    assert diagnostics.finalize(sums)["routing_tokens"] == 1

    old = jnp.asarray([0.0, -1.0, -2.0, -3.0, -4.0])
    infer = jnp.asarray([0.1, -1.5, -2.0, -2.0, 9.0])
    versions = jnp.asarray([5, 4, 3, 1, -1])  # lags 0, 1, 2, 4 (-> bucket 2), unknown
    gaps = diagnostics.finalize({k: float(v) for k, v in diagnostics.gap_sums(
        old, infer, versions, jnp.asarray(5), jnp.ones(5, bool)).items()})
    assert gaps["tokens_gap0"] == 1 and gaps["tokens_gap1"] == 1 and gaps["tokens_gap2"] == 2
    np.testing.assert_allclose([gaps["logp_diff_gap0"], gaps["logp_diff_gap1"], gaps["logp_diff_gap2"]],
                               [0.1, 0.5, 0.5], rtol=1e-6)
    assert gaps["logp_diff_gap2_max"] == 1.0


def even_bytes(record, text):
    data = np.frombuffer(text.encode(), np.uint8)
    return float(np.mean(data % 2 == 0)) if len(data) else 0.0


def test_rl_run_with_replay_logs_routing_and_lag(model):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(RLConfig, os.path.join(root, "configs", "tiny_rl.yaml"),
                      ["steps=2", "checkpoint_every=0", "rollout.mode=c3po++", "router_replay=replay"])
    records = [PromptRecord(id=f"p{i}", prompt=f"What is {i} + {i}?", domain="math", answer=str(2 * i))
               for i in range(6)]
    history = train_rl(model, records, even_bytes, cfg).history
    for h in history:
        assert h["routing_dropped"] == 0 and h["routing_missing"] == 0
        for key in ("routing_overlap", "routing_disagree_l0", "routing_disagree_l1", "logp_diff_gap0",
                    "kpop_masked_frac", "seq_masked_frac", "binary_kl_mean"):
            assert key in h, key
    # float32 engine, on-policy first step: the trainer's own routing and log-probs agree with the engine's
    assert history[0]["routing_disagree"] <= 0.01 and history[0]["logp_diff_gap0"] < 1e-4
    assert history[1]["tokens_gap1"] > 0  # the first step's cut tail, sampled by the previous policy


def test_replay_config_errors():
    with pytest.raises(ValueError, match="rl.router_replay='r4'"):
        RLConfig(router_replay="r4")
    from rollout.config import RolloutConfig
    with pytest.raises(ValueError, match="rl.router_replay=replay needs an engine"):
        RLConfig(router_replay="replay", rollout=RolloutConfig(engine="sglang"))
