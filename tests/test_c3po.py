"""C3PO step assembly and packing: token conservation, the exact phi budget, alignment, layouts and bad input."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringjax.trainer import (Response, StepBatch, assemble_step, pack_micro_batches, response_tokens, split_response,
                             take_groups)
from ringjax.trainer.batch import step_weights


def _response(rng, i, prompt_len, n, advantage=0.0, versions=True):
    return Response(prompt_id=i, prompt=rng.integers(1, 100, prompt_len), tokens=rng.integers(1, 100, n),
                    logp_infer=-rng.random(n), reward=float(i % 2), advantage=advantage,
                    versions=rng.integers(0, 3, n) if versions else None, group_id=i // 2)


@st.composite
def pools(draw):
    """Responses with distinct advantages and a phi in [longest response, available tokens]."""
    shapes = draw(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 9)), min_size=1, max_size=8))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    versions = draw(st.booleans())
    responses = [_response(rng, i, p, n, advantage=0.5 + i, versions=versions) for i, (p, n) in enumerate(shapes)]
    phi = draw(st.integers(max(n for _, n in shapes), sum(n for _, n in shapes)))
    return responses, phi


def _full(pieces):
    """Reassembles cut pieces into {(prompt_id, original prompt): (tokens, logp, versions)} by their offsets."""
    out = {}
    for r in pieces:
        prompt = r.prompt[:len(r.prompt) - r.offset]
        key = (r.prompt_id, prompt.tobytes())
        tokens, logp, versions = out.get(key, ([], [], []))
        assert len(tokens) == r.offset and np.array_equal(r.prompt[len(prompt):], np.asarray(tokens, np.int32))
        out[key] = (tokens + list(r.tokens), logp + list(r.logp_infer),
                    versions + ([] if r.versions is None else list(r.versions)))
    return out


def _masked_triples(micro_batches):
    """(token, logp_infer, advantage, seq_index) at every masked position, sorted."""
    triples = []
    for mb in micro_batches:
        b, j = np.nonzero(mb.loss_mask)
        triples += zip(mb.tokens[b, j + 1].tolist(), mb.logp_infer[b, j].tolist(), mb.advantages[b, j].tolist(),
                       mb.seq_index[b, j].tolist())
    return sorted(triples)


@settings(max_examples=200, deadline=None)
@given(pools())
def test_assembly_takes_exactly_phi_and_conserves_tokens(pool):
    responses, phi = pool
    step, leftover = assemble_step(responses, phi)
    assert response_tokens(step.responses) == phi
    assert response_tokens(step.responses) + response_tokens(leftover) == response_tokens(responses)
    assert step.cut == (len(leftover[0]) if leftover and leftover[0].offset else 0)
    assert _full([*step.responses, *leftover]) == _full(responses)  # nothing lost or duplicated, order kept
    for piece in (*step.responses, *leftover):  # every piece keeps the advantage of its rollout
        assert piece.advantage == 0.5 + piece.prompt_id


@settings(max_examples=200, deadline=None)
@given(pools(), st.integers(1, 4), st.integers(0, 6), st.booleans())
def test_packing_masks_exactly_phi_aligned_tokens(pool, rows, extra, packed):
    responses, phi = pool
    step, _ = assemble_step(responses, phi)
    seq_len = max(len(r.prompt) + len(r) for r in step.responses) + extra
    mbs = pack_micro_batches(step, rows, seq_len, packed=packed)
    assert sum(int(mb.loss_mask.sum()) for mb in mbs) == phi
    for mb in mbs:
        assert mb.tokens.shape == (rows, seq_len) and mb.loss_mask.shape == (rows, seq_len - 1)
    # Reconstruct every response from its masked positions and check token, logp, advantage, length.
    got = {}
    for mb in mbs:
        for b, j in zip(*np.nonzero(mb.loss_mask)):
            assert mb.segment_ids[b, j] == mb.segment_ids[b, j + 1] > 0
            got.setdefault(int(mb.seq_index[b, j]), []).append(
                (mb.tokens[b, j + 1], mb.logp_infer[b, j], mb.advantages[b, j], mb.response_len[b, j],
                 mb.positions[b, j + 1]))
    assert sorted(got) == list(range(len(step.responses)))
    for i, r in enumerate(step.responses):
        tokens, logp, adv, lens, pos = map(np.array, zip(*got[i]))
        np.testing.assert_array_equal(tokens, r.tokens)
        np.testing.assert_array_equal(logp, r.logp_infer)
        assert np.all(adv == np.float32(r.advantage)) and np.all(lens == len(r))
        np.testing.assert_array_equal(pos, len(r.prompt) + np.arange(len(r)))


@settings(max_examples=100, deadline=None)
@given(pools(), st.integers(1, 3))
def test_packed_and_unpacked_layouts_agree(pool, rows):
    responses, phi = pool
    step, _ = assemble_step(responses, phi)
    seq_len = 16
    packed = pack_micro_batches(step, rows, seq_len, packed=True)
    unpacked = pack_micro_batches(step, rows, seq_len, packed=False)
    assert _masked_triples(packed) == _masked_triples(unpacked)
    assert len(packed) <= len(unpacked)


def test_cut_keeps_head_and_advantage():
    rng = np.random.default_rng(0)
    a, b, c = (_response(rng, i, 3, n, advantage=a) for i, (n, a) in enumerate([(4, 1.5), (6, -0.25), (5, 2.0)]))
    step, leftover = assemble_step([a, b, c], phi=7)
    assert isinstance(step, StepBatch) and step.cut == 3 and step.phi == 7
    assert step.responses[0] is a
    head, tail = step.responses[1], leftover[0]
    np.testing.assert_array_equal(head.tokens, b.tokens[:3])
    np.testing.assert_array_equal(head.logp_infer, b.logp_infer[:3])
    np.testing.assert_array_equal(head.versions, b.versions[:3])
    np.testing.assert_array_equal(head.prompt, b.prompt)
    assert head.advantage == tail.advantage == b.advantage == -0.25
    np.testing.assert_array_equal(tail.tokens, b.tokens[3:])
    np.testing.assert_array_equal(tail.prompt, np.concatenate([b.prompt, b.tokens[:3]]))
    assert tail.offset == 3 and leftover[1] is c
    # The cut happens after advantages: the head's tokens and the full rollout's advantage, nothing recomputed.
    assert head.reward == b.reward and head.group_id == b.group_id


def test_exact_fit_leaves_no_tail():
    rng = np.random.default_rng(1)
    rs = [_response(rng, i, 2, 4) for i in range(3)]
    step, leftover = assemble_step(rs, phi=8)
    assert step.cut == 0 and list(step.responses) == rs[:2] and leftover == rs[2:]


def test_packing_segments_and_positions():
    rng = np.random.default_rng(2)
    rs = [_response(rng, i, p, n) for i, (p, n) in enumerate([(2, 3), (1, 2), (3, 4)])]
    step, _ = assemble_step(rs, phi=9)
    (mb,) = pack_micro_batches(step, rows=2, seq_len=8)
    np.testing.assert_array_equal(mb.segment_ids, [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(mb.positions, [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 0]])
    np.testing.assert_array_equal(mb.loss_mask, [[0, 1, 1, 1, 0, 1, 1], [0, 0, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(mb.tokens[0, :5], np.concatenate([rs[0].prompt, rs[0].tokens]))


@pytest.mark.parametrize("phi, match", [(0, "phi=0"), (-3, "phi=-3"), (5, "phi=5 is smaller than one response"),
                                        (30, "phi=30 needs more tokens")])
def test_bad_phi(phi, match):
    rng = np.random.default_rng(3)
    rs = [_response(rng, i, 2, n) for i, n in enumerate([4, 6, 5])]
    with pytest.raises(ValueError, match=match):
        assemble_step(rs, phi)


def test_configured_max_response_len():
    rng = np.random.default_rng(4)
    rs = [_response(rng, i, 2, n) for i, n in enumerate([4, 6])]
    assert response_tokens(assemble_step(rs, 8, max_response_len=8)[0].responses) == 8
    with pytest.raises(ValueError, match="phi=7 is smaller than max_response_len=8"):
        assemble_step(rs, 7, max_response_len=8)
    with pytest.raises(ValueError, match="prompt_id=1 has 6 tokens, more than max_response_len=5"):
        assemble_step(rs, 10, max_response_len=5)


def test_missing_advantage_names_response():
    rng = np.random.default_rng(5)
    rs = [_response(rng, i, 2, 4) for i in range(3)]
    rs[1] = dataclasses.replace(rs[1], prompt_id="p-17", advantage=None)
    with pytest.raises(ValueError, match=r"response 1 \(prompt_id='p-17'\) has no advantage"):
        assemble_step(rs, 6)
    assemble_step(rs, 4)  # untaken responses may still lack an advantage


def test_sequence_longer_than_row():
    rng = np.random.default_rng(6)
    rs = [_response(rng, i, 3, n) for i, n in enumerate([4, 6])]
    step, _ = assemble_step(rs, 10)
    with pytest.raises(ValueError, match=r"prompt_id=1 \(prompt 3 \+ response 6 = 9 tokens\).*seq_len=8"):
        pack_micro_batches(step, rows=2, seq_len=8)


def test_response_validation():
    with pytest.raises(ValueError, match="logp_infer has 2 entries for 3 tokens"):
        Response("q", [1], [1, 2, 3], [0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="prompt_id='q'"):
        Response("q", [], [1], [0.0], 1.0)
    with pytest.raises(ValueError, match="keep=0"):
        split_response(Response("q", [1], [1, 2], [0.0, 0.0], 1.0), 0)


def test_sample_budget_takes_whole_groups_in_order_of_first_appearance():
    """`take_groups` (the baseline C3PO replaces): whole groups, however many tokens, in the pool's order; the rest
    is the leftover, in order."""
    rng = np.random.default_rng(0)
    pool = [_response(rng, i, 3, n, advantage=float(i)) for i, n in enumerate([5, 9, 2, 7, 4, 6, 3, 8])]
    pool = [dataclasses.replace(r, group_id=g) for r, g in zip(pool, [2, 0, 2, 0, 1, 3, 1, 3])]
    step, leftover = take_groups(pool, 2)
    assert [r.group_id for r in step.responses] == [2, 0, 2, 0] and step.cut == 0
    assert step.phi == 5 + 9 + 2 + 7 and [r.group_id for r in leftover] == [1, 3, 1, 3]
    assert all(a is b for a, b in zip(step.responses, pool[:4]))  # whole responses, nothing cut
    mbs = pack_micro_batches(step, rows=1, seq_len=13)
    assert len(mbs) == 3 and sum(int(mb.loss_mask.sum()) for mb in mbs) == step.phi
    weights = step_weights(mbs, "seq_mean", 100)
    assert abs(sum(float(w.sum()) for w in weights) - 1.0) < 1e-6
    with pytest.raises(ValueError, match="needs more than the 4 groups"):
        take_groups(pool, 5)
    with pytest.raises(ValueError, match="no group_id"):
        take_groups([dataclasses.replace(pool[0], group_id=None)], 1)
