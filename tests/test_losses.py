"""RL objective (docs/architecture.md): hand-computed examples, numpy references and hypothesis properties."""

import dataclasses
import math
from typing import get_args

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringjax.losses import (ADVANTAGES, AGGREGATIONS, CORRECTIONS, LossConfig, compute_advantages, grpo_advantages,
                            grpo_advantages_flat, icepop_weight, policy_loss, token_advantages)
from ringjax.losses.aggregation import batch_weights, sequence_ids
from ringjax.losses.correction import BERNOULLI_EPS, binary_kl, train_inference_ratio
from ringjax.losses.config import Advantage, Aggregation, Correction
from ringjax.trainer import Response, assemble_step, pack_micro_batches
from ringjax.trainer.batch import stack_micro_batches

TOL = 1e-5  # fp32
MODES = ["none", "tis", "icepop", "icepop_seq", "kpop", "seq_mask"]
NAN, INF = float("nan"), float("inf")


def test_registries_match_config_choices():
    assert set(ADVANTAGES) == set(get_args(Advantage))
    assert set(CORRECTIONS) == set(get_args(Correction))
    assert set(AGGREGATIONS) == set(get_args(Aggregation))


# ---------------------------------------------------------------------------------------------------------------
# hand-computed example: 2 sequences (3 and 2 tokens) in a [2, 4] batch, padding filled with garbage.
#
#            k = pi_old/pi_infer   r = pi/pi_old   A    term = min(rA, clip(r, 0.8, 1.2) A)
#   row 0 t0     0.25 (< alpha)        1.0        +1    1.0
#   row 0 t1     1.0                   1.5        +1    min(1.5, 1.2) = 1.2        (clipped)
#   row 0 t2     4.0 (> tis cap)       0.5        +1    min(0.5, 0.8) = 0.5
#   row 1 t0     8.0 (> beta)          0.5        -2    min(-1.0, -1.6) = -1.6     (clipped)
#   row 1 t1     4.0                   1.1        -2    -2.2
# weights:  none [1, 1, 1 | 1, 1]   tis(cap 2) [0.25, 1, 2 | 2, 2]   icepop(0.5, 5) [0, 1, 4 | 0, 4]
#   icepop_seq: geometric mean of k: row 0 (0.25 * 1 * 4)^(1/3) = 1 -> kept, weight 1;
#                                    row 1 (8 * 4)^(1/2) = 5.657 > 5 -> the whole sequence masked.
# sum of weight * term: none 1 + 1.2 + 0.5 - 1.6 - 2.2 = -1.1;  tis 0.25 + 1.2 + 1.0 - 3.2 - 4.4 = -5.15;
#                       icepop 1.2 + 2.0 - 8.8 = -5.6;  icepop_seq 2.7.
# c3po (phi = 10) loss = -sum / 10.  seq_mean loss = -(row 0 sum / 3 + row 1 sum / 2) / 2.
# d loss / d logp (c3po) = -w r A / phi where the unclipped branch is the min, 0 where clipped.

K = [[0.25, 1.0, 4.0], [8.0, 4.0]]
R = [[1.0, 1.5, 0.5], [0.5, 1.1]]
A = [1.0, -2.0]
LOGP_OLD = [[-1.0, -0.5, -2.0], [-0.3, -1.5]]
C3PO_LOSS = {"none": 0.11, "tis": 0.515, "icepop": 0.56, "icepop_seq": -0.27}
SEQ_MEAN_LOSS = {"none": -(2.7 / 3 - 3.8 / 2) / 2, "tis": -(2.45 / 3 - 7.6 / 2) / 2,
                 "icepop": -(3.2 / 3 - 8.8 / 2) / 2, "icepop_seq": -(2.7 / 3 + 0.0) / 2}
C3PO_GRAD = {"none": [[-0.1, 0, -0.05, 0], [0, 0.22, 0, 0]], "tis": [[-0.025, 0, -0.1, 0], [0, 0.44, 0, 0]],
             "icepop": [[0, 0, -0.2, 0], [0, 0.88, 0, 0]], "icepop_seq": [[-0.1, 0, -0.05, 0], [0, 0, 0, 0]]}
ZERO_WEIGHT_FRAC = {"none": 0.0, "tis": 0.0, "icepop": 0.4, "icepop_seq": 0.4}


def _example():
    """(logp, logp_old, logp_infer, advantages, mask, entropy) of the table above; garbage on padding."""
    logp, old, infer, adv, ent = (np.full((2, 4), v) for v in (NAN, INF, -INF, NAN, NAN))
    mask = np.zeros((2, 4), bool)
    entropies = [[0.5, 1.0, 1.5], [2.0, 3.0]]
    for b in range(2):
        n = len(K[b])
        mask[b, :n] = True
        old[b, :n] = LOGP_OLD[b]
        infer[b, :n] = np.asarray(LOGP_OLD[b]) - np.log(K[b])
        logp[b, :n] = np.asarray(LOGP_OLD[b]) + np.log(R[b])
        adv[b, :n] = A[b]
        ent[b, :n] = entropies[b]
    return tuple(jnp.asarray(x, jnp.float32) for x in (logp, old, infer, adv)) + (jnp.asarray(mask),
                                                                                   jnp.asarray(ent, jnp.float32))


@pytest.mark.parametrize("mode", list(C3PO_LOSS))
def test_hand_example_loss_metrics_and_gradient(mode):
    logp, old, infer, adv, mask, ent = _example()
    cfg = LossConfig(correction=mode, aggregation="c3po")

    def f(lp):
        return policy_loss(lp, old, infer, adv, mask, cfg, phi=10.0, entropy=ent)

    (loss, m), grad = jax.value_and_grad(f, has_aux=True)(logp)
    assert float(loss) == pytest.approx(C3PO_LOSS[mode], abs=TOL)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(C3PO_GRAD[mode]), atol=TOL)
    assert np.all(np.isfinite(np.asarray(grad)))

    seq_loss, _ = policy_loss(logp, old, infer, adv, mask, dataclasses.replace(cfg, aggregation="seq_mean"))
    assert float(seq_loss) == pytest.approx(SEQ_MEAN_LOSS[mode], abs=TOL)

    log_k = [math.log(k) for row in K for k in row]
    expected = {
        "icepop_masked_frac": 0.4,  # k = 0.25 and k = 8 are out of [0.5, 5], whatever the mode
        "correction_zero_frac": ZERO_WEIGHT_FRAC[mode],
        "logp_diff_mean": sum(abs(x) for x in log_k) / 5,
        "logp_diff_max": math.log(8.0),
        "kl_infer_train": sum(math.exp(x) - x - 1 for x in log_k) / 5,
        "clip_frac": 0.4,
        "ratio_mean": (1.0 + 1.5 + 0.5 + 0.5 + 1.1) / 5,
        "logp_mean": sum(o + math.log(r) for lo, lr in zip(LOGP_OLD, R) for o, r in zip(lo, lr)) / 5,
        "entropy_mean": (0.5 + 1.0 + 1.5 + 2.0 + 3.0) / 5,
        "entropy_masked_mean": (0.5 + 2.0) / 2,
        "valid_tokens": 5.0,
    }
    for name, value in expected.items():
        assert float(m[name]) == pytest.approx(value, abs=TOL), name


def test_hand_example_regularisers_and_gradient():
    """token_mean with KL to a reference, entropy bonus and router terms, correction none.

    ref = logp + log 2 on every valid token: k3 = 2 - log 2 - 1 and d k3 / d logp = 1 - exp(ref - logp) = -1.
    loss = pg + 0.1 * (1 - log 2) - 0.01 * 1.6 + 0.5 * 3.0 + 0.25 * 4.0, pg = 1.1 / 5.
    d loss / d logp = -r A / 5 where unclipped, + 0.1 * (-1) / 5 on every valid token.
    """
    logp, old, infer, adv, mask, ent = _example()
    ref = jnp.where(mask, logp + math.log(2.0), NAN)
    cfg = LossConfig(correction="none", aggregation="token_mean", kl_coef=0.1, entropy_coef=0.01,
                     load_balance_coef=0.5, z_loss_coef=0.25)
    aux = {"load_balance": jnp.float32(3.0), "z_loss": jnp.float32(4.0)}

    def f(lp):
        return policy_loss(lp, old, infer, adv, mask, cfg, logp_ref=ref, entropy=ent, aux=aux)

    (loss, m), grad = jax.value_and_grad(f, has_aux=True)(logp)
    assert float(loss) == pytest.approx(0.22 + 0.1 * (1 - math.log(2)) - 0.016 + 1.5 + 1.0, abs=TOL)
    assert float(m["kl_ref"]) == pytest.approx(1 - math.log(2), abs=TOL)
    pg = np.array([[-1.0, 0, -0.5, 0], [0, 2.2, 0, 0]]) / 5
    np.testing.assert_allclose(np.asarray(grad), pg - 0.02 * np.asarray(mask), atol=TOL)


def test_missing_optional_inputs_raise():
    logp, old, infer, adv, mask, _ = _example()
    for kwargs, field in (({"kl_coef": 1e-3}, "kl_coef"), ({"entropy_coef": 1e-3}, "entropy_coef"),
                          ({"load_balance_coef": 1e-5}, "load_balance_coef"), ({"z_loss_coef": 1e-7}, "z_loss_coef")):
        with pytest.raises(ValueError, match=field):
            policy_loss(logp, old, infer, adv, mask, LossConfig(**kwargs), phi=10.0)


# ---------------------------------------------------------------------------------------------------------------
# kpop and seq_mask: hand-computed weights, losses, gradients, and the would-be mask metrics of every mode


def _bernoulli_kl(p, q, eps=1e-8):
    """KL(Bernoulli(p) || Bernoulli(q)) in float64, p and q clamped to [eps, 1 - eps]."""
    p, q = min(max(p, eps), 1 - eps), min(max(q, eps), 1 - eps)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _binary_kl(p, q):
    return max(_bernoulli_kl(p, q), _bernoulli_kl(q, p))


def _batch(logp_old, logp_infer, shape):
    """[rows, S] arrays of the given per-row log-probs, padding filled with garbage; A = 1 and r = 1 on valid tokens."""
    old, infer, adv = np.full(shape, NAN), np.full(shape, -INF), np.full(shape, NAN)
    mask = np.zeros(shape, bool)
    for b, (lo, li) in enumerate(zip(logp_old, logp_infer)):
        n = len(lo)
        old[b, :n], infer[b, :n], adv[b, :n], mask[b, :n] = lo, li, 1.0, True
    old, infer, adv = (jnp.asarray(x, jnp.float32) for x in (old, infer, adv))
    return old, old, infer, adv, jnp.asarray(mask)  # logp = logp_old: r = 1


# (p = pi_old, q = pi_infer) per token; row 0 and row 1 are one sequence each.
#   row 0 t0   0.5  / 0.45    k = 1.11   binary KL 0.0050   kept, weight k
#   row 0 t1   0.99 / 0.9     k = 1.1    binary KL 0.1445   MASKED although IcePop keeps it (k in [0.5, 5])
#   row 1 t0   1e-3 / 1e-4    k = 10     binary KL 0.0014   kept, weight 10, although IcePop masks it (k > 5)
#   row 1 t1   1e-4 / 1e-3    k = 0.1    binary KL 0.0014   kept, weight 0.1, although IcePop masks it (k < 0.5)
#   row 1 t2   1    / e^-30   k = e^30   binary KL 18.42    masked (p and q clamped to [1e-8, 1 - 1e-8])
KPOP_P = [[0.5, 0.99], [1e-3, 1e-4, 1.0]]
KPOP_Q = [[0.45, 0.9], [1e-4, 1e-3, math.exp(-30.0)]]


def test_bernoulli_kl_by_hand():
    assert _bernoulli_kl(0.99, 0.9) == pytest.approx(0.99 * math.log(1.1) + 0.01 * math.log(0.1))
    assert _binary_kl(0.99, 0.9) == pytest.approx(0.9 * math.log(0.9 / 0.99) + 0.1 * math.log(10.0))  # 0.1445
    assert _binary_kl(1e-3, 1e-4) == pytest.approx(1e-3 * math.log(10.0) + 0.999 * math.log(0.999 / 0.9999))
    p = [x for row in KPOP_P for x in row]
    q = [x for row in KPOP_Q for x in row]
    got = binary_kl(jnp.log(jnp.asarray(p, jnp.float32)), jnp.log(jnp.asarray(q, jnp.float32)))
    np.testing.assert_allclose(np.asarray(got), [_binary_kl(a, b) for a, b in zip(p, q)], rtol=1e-4)
    assert BERNOULLI_EPS == 1e-8
    ones = jnp.zeros(3)  # p = q = 1: both clamped to 1 - 1e-8, which float32 cannot hold as a probability
    np.testing.assert_array_equal(np.asarray(binary_kl(ones, ones)), 0.0)


def _kpop_batch():
    return _batch([[math.log(x) for x in row] for row in KPOP_P], [[math.log(x) for x in row] for row in KPOP_Q],
                  (2, 4))


def test_kpop_weights_loss_and_gradient():
    logp, old, infer, adv, mask = _kpop_batch()
    seq = sequence_ids(mask)
    k = np.asarray(train_inference_ratio(old, infer))
    weight = np.asarray(CORRECTIONS["kpop"](old, infer, mask, seq, LossConfig(correction="kpop")))
    kept = [(0, 0, 0.5 / 0.45), (1, 0, 10.0), (1, 1, 0.1)]
    for b, t, k_hand in kept:
        assert k[b, t] == pytest.approx(k_hand, rel=1e-5) and weight[b, t] == k[b, t]
    assert weight[0, 1] == 0.0 and weight[1, 2] == 0.0
    icepop = np.asarray(CORRECTIONS["icepop"](old, infer, mask, seq, LossConfig()))
    assert icepop[0, 1] == k[0, 1] and icepop[1, 0] == 0.0 and icepop[1, 1] == 0.0  # the opposite decisions

    cfg = LossConfig(correction="kpop", aggregation="c3po")
    (loss, m), grad = jax.value_and_grad(lambda lp: policy_loss(lp, old, infer, adv, mask, cfg, phi=10.0),
                                         has_aux=True)(logp)
    assert float(loss) == pytest.approx(-(0.5 / 0.45 + 10.0 + 0.1) / 10.0, rel=1e-5)
    want = -np.array([[0.5 / 0.45, 0, 0, 0], [10.0, 0.1, 0, 0]]) / 10.0  # d/d logp = -w r A / phi; 0 where masked
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5, atol=1e-7)
    assert grad[0, 1] == 0.0 and grad[1, 2] == 0.0
    assert float(m["correction_zero_frac"]) == pytest.approx(2 / 5)


def test_kpop_bound_moves_the_cut():
    """The 0.99 -> 0.9 token (binary KL 0.1445) is kept once kpop_bound is above its divergence."""
    _, old, infer, _, mask = _kpop_batch()
    seq = sequence_ids(mask)
    k = np.asarray(train_inference_ratio(old, infer))
    for bound, kept in ((0.14, False), (0.15, True)):
        w = np.asarray(CORRECTIONS["kpop"](old, infer, mask, seq, LossConfig(correction="kpop", kpop_bound=bound)))
        assert (w[0, 1] == k[0, 1]) if kept else (w[0, 1] == 0.0)
        assert w[1, 2] == 0.0  # binary KL 18.4 stays masked


# seq_mask: one row with two packed sequences (segment ids 1 and 2, 0 on padding) and an all-padding row; sequence 2
# also owns a masked token holding garbage (as a prompt token of a packed response would), which must not count.
#   sequence 1: log k = [0.2, -1.5, 0.1]   max |log k| = 1.5 > seq_bound 1 -> every token weight 0
#   sequence 2: log k = [0.5, -0.9, 0.0]   max |log k| = 0.9             -> kept, weights k = [e^0.5, e^-0.9, 1]
SEQ_OLD = [-1.0, -2.0, -0.5, -0.7, -3.0, -1.5]
SEQ_LOG_K = [0.2, -1.5, 0.1, 0.5, -0.9, 0.0]


def _seq_batch():
    logp, old, infer, adv, mask = _batch([SEQ_OLD], [[o - lk for o, lk in zip(SEQ_OLD, SEQ_LOG_K)]], (2, 8))
    segment_ids = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0], [0] * 8], jnp.int32)
    return logp, old, infer, adv, mask, segment_ids


def test_seq_mask_drops_whole_sequences():
    logp, old, infer, adv, mask, segment_ids = _seq_batch()
    kept = [math.exp(x) for x in SEQ_LOG_K[3:]]
    weight = CORRECTIONS["seq_mask"](old, infer, mask, sequence_ids(mask, segment_ids), LossConfig())
    np.testing.assert_allclose(np.asarray(weight)[0, :6], [0.0, 0.0, 0.0] + kept, rtol=1e-6)
    assert np.all(np.asarray(weight)[0, :3] == 0.0)

    cfg = LossConfig(correction="seq_mask", aggregation="c3po")
    (loss, m), grad = jax.value_and_grad(
        lambda lp: policy_loss(lp, old, infer, adv, mask, cfg, phi=10.0, segment_ids=segment_ids), has_aux=True)(logp)
    assert float(loss) == pytest.approx(-sum(kept) / 10.0, rel=1e-6)
    want = np.zeros((2, 8))
    want[0, 3:6] = [-x / 10.0 for x in kept]
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-6, atol=0)
    assert np.all(np.asarray(grad)[0, :3] == 0.0)
    assert float(m["correction_zero_frac"]) == pytest.approx(0.5)

    # a bound above 1.5 keeps sequence 1 too; without segment ids row 0 is ONE sequence, dropped as a whole
    loose = CORRECTIONS["seq_mask"](old, infer, mask, sequence_ids(mask, segment_ids), LossConfig(seq_bound=1.6))
    np.testing.assert_allclose(np.asarray(loose)[0, :6], np.exp(SEQ_LOG_K), rtol=1e-6)
    unpacked = CORRECTIONS["seq_mask"](old, infer, mask, sequence_ids(mask), LossConfig())
    assert np.all(np.asarray(unpacked)[0, :6] == 0.0)
    # a NaN log-prob on a VALID token rejects its sequence (as IcePop masks a NaN k)
    nan_old = old.at[0, 4].set(NAN)
    rejected = CORRECTIONS["seq_mask"](nan_old, infer, mask, sequence_ids(mask, segment_ids), LossConfig(seq_bound=1.6))
    np.testing.assert_allclose(np.asarray(rejected)[0, :6], np.exp(SEQ_LOG_K[:3]).tolist() + [0.0] * 3, rtol=1e-6)


def _expected_mismatch_metrics(p, q, seqs, cfg):
    """The would-be mask metrics by hand: p, q per valid token, seqs = lists of token indices, one per sequence."""
    log_k = [math.log(a / b) for a, b in zip(p, q)]
    kl = [_binary_kl(a, b) for a, b in zip(p, q)]
    dropped = [s for s in seqs if max(abs(log_k[t]) for t in s) > cfg.seq_bound]
    n = len(p)
    return {"icepop_masked_frac": sum(not cfg.alpha <= math.exp(x) <= cfg.beta for x in log_k) / n,
            "kpop_masked_frac": sum(x > cfg.kpop_bound for x in kl) / n,
            "seq_masked_frac": sum(len(s) for s in dropped) / n, "seq_masked_seqs": float(len(dropped)),
            "num_seqs": float(len(seqs)), "binary_kl_max": max(kl), "binary_kl_mean": sum(kl) / n}


@pytest.mark.parametrize("mode", MODES)
def test_would_be_mask_metrics_in_every_mode(mode):
    """Whatever the correction, every run logs what icepop, kpop and seq_mask would mask; garbage on padding."""
    cfg = LossConfig(correction=mode, aggregation="token_mean")

    # kpop inputs: icepop would mask 3 of 5 (k = 10, 0.1, e^30), kpop 2 (0.99 -> 0.9 and 1 -> e^-30), seq_mask row 1
    logp, old, infer, adv, mask = _kpop_batch()
    _, m = policy_loss(logp, old, infer, adv, mask, cfg)
    p, q = [x for row in KPOP_P for x in row], [x for row in KPOP_Q for x in row]
    expected = _expected_mismatch_metrics(p, q, [[0, 1], [2, 3, 4]], cfg)
    assert expected["icepop_masked_frac"] == 3 / 5 and expected["kpop_masked_frac"] == 2 / 5
    assert expected["seq_masked_frac"] == 3 / 5 and expected["seq_masked_seqs"] == 1 and expected["num_seqs"] == 2
    for name, value in expected.items():
        assert float(m[name]) == pytest.approx(value, rel=1e-4, abs=1e-7), name

    # seq_mask inputs: two packed sequences in row 0, an empty row 1
    logp, old, infer, adv, mask, segment_ids = _seq_batch()
    _, m = policy_loss(logp, old, infer, adv, mask, cfg, segment_ids=segment_ids)
    p = [math.exp(o) for o in SEQ_OLD]
    q = [math.exp(o - lk) for o, lk in zip(SEQ_OLD, SEQ_LOG_K)]
    expected = _expected_mismatch_metrics(p, q, [[0, 1, 2], [3, 4, 5]], cfg)
    assert expected["icepop_masked_frac"] == 2 / 6  # k = e^-1.5 and e^-0.9 < 0.5
    assert expected["seq_masked_frac"] == 0.5 and expected["seq_masked_seqs"] == 1 and expected["num_seqs"] == 2
    for name, value in expected.items():
        assert float(m[name]) == pytest.approx(value, rel=1e-4, abs=1e-7), name
    assert all(np.isfinite(float(v)) for v in m.values())


# ---------------------------------------------------------------------------------------------------------------
# properties

@settings(max_examples=200, deadline=None)
@given(st.data())
def test_icepop_weight_keeps_exactly_the_band(data):
    f32 = st.floats(2.0**-13, 2.0**13, width=32)
    alpha = data.draw(f32)
    beta = data.draw(st.floats(alpha, 2.0**13, width=32))
    k = np.asarray(data.draw(st.lists(st.one_of(f32, st.sampled_from([alpha, beta])), min_size=1, max_size=32)),
                   np.float32)
    keep = np.array([alpha <= x <= beta for x in k.tolist()])
    expected = np.where(keep, k, np.float32(0))
    np.testing.assert_array_equal(np.asarray(icepop_weight(jnp.asarray(k), alpha, beta)), expected)
    cfg = LossConfig(alpha=alpha, beta=beta)
    log_k, zeros = jnp.log(jnp.asarray(k))[None], jnp.zeros((1, k.size))
    seq = sequence_ids(jnp.ones((1, k.size), bool))
    via_registry = CORRECTIONS["icepop"](log_k, zeros, jnp.ones((1, k.size), bool), seq, cfg)
    np.testing.assert_array_equal(np.asarray(via_registry), icepop_weight(jnp.exp(log_k), alpha, beta))


B, S = 3, 5
_logps = st.lists(st.floats(-8.0, 0.0, width=32), min_size=B * S, max_size=B * S)


@settings(max_examples=60, deadline=None)
@given(_logps, _logps, _logps, st.lists(st.booleans(), min_size=B * S, max_size=B * S),
       st.sampled_from(MODES), st.sampled_from(["c3po", "seq_mean", "token_mean"]), st.floats(0.0, 1.0))
def test_zero_advantage_gives_zero_policy_gradient(logp, old, infer, mask, mode, aggregation, entropy_coef):
    arrays = [jnp.asarray(x, jnp.float32).reshape(B, S) for x in (logp, old, infer)]
    mask = jnp.asarray(mask).reshape(B, S)
    cfg = LossConfig(correction=mode, aggregation=aggregation, entropy_coef=entropy_coef)
    entropy = jnp.ones((B, S))

    def f(lp):
        return policy_loss(lp, arrays[1], arrays[2], jnp.zeros((B, S)), mask, cfg, phi=7.0, entropy=entropy)[0]

    grad = np.asarray(jax.grad(f)(arrays[0]))
    assert np.all(grad == 0.0)


# ---------------------------------------------------------------------------------------------------------------
# packed vs unpacked

def _random_sequences(rng, n, max_len):
    """n sequences of random length: (logp, logp_old, logp_infer, advantage) per token."""
    out = []
    for _ in range(n):
        length = int(rng.integers(1, max_len + 1))
        old = rng.uniform(-4, -0.1, length)
        out.append((old + rng.normal(0, 0.3, length), old, old + rng.normal(0, 0.8, length),
                    np.full(length, rng.normal())))
    return out


def _layout(seqs, rows_of, width):
    """Place sequence i in row rows_of[i] (several per row -> packed with segment ids); garbage on padding."""
    n_rows = max(rows_of) + 1
    arrays = [np.full((n_rows, width), NAN) for _ in range(4)]
    mask, seg, fill = np.zeros((n_rows, width), bool), np.zeros((n_rows, width), np.int32), [0] * n_rows
    for i, (seq, row) in enumerate(zip(seqs, rows_of)):
        start, length = fill[row], len(seq[0])
        for a, x in zip(arrays, seq):
            a[row, start:start + length] = x
        mask[row, start:start + length] = True
        seg[row, start:start + length] = i
        fill[row] += length
    return [jnp.asarray(a, jnp.float32) for a in arrays] + [jnp.asarray(mask), jnp.asarray(seg)]


def _loss(layout, cfg, packed):
    logp, old, infer, adv, mask, seg = layout
    return float(policy_loss(logp, old, infer, adv, mask, cfg, phi=50.0, segment_ids=seg if packed else None)[0])


@pytest.mark.parametrize("mode", MODES)
def test_packed_equals_unpacked(mode):
    rng = np.random.default_rng(0)
    seqs = _random_sequences(rng, 6, 7)
    cfg = LossConfig(correction=mode, alpha=0.7, beta=1.5)
    one_per_row = _layout(seqs, list(range(6)), 9)
    packed = _layout(seqs, [0, 0, 1, 1, 1, 2], 22)  # 2, 3 and 1 sequences per row
    first, second = _layout(seqs[:2], [0, 1], 7), _layout(seqs[2:], [0, 1, 2, 3], 12)
    for aggregation in ("c3po", "seq_mean", "token_mean"):
        c = dataclasses.replace(cfg, aggregation=aggregation)
        assert _loss(packed, c, True) == pytest.approx(_loss(one_per_row, c, False), abs=TOL)
    c3po = dataclasses.replace(cfg, aggregation="c3po")
    assert _loss(one_per_row, c3po, False) == pytest.approx(_loss(first, c3po, False) + _loss(second, c3po, False),
                                                            abs=TOL)
    seq = dataclasses.replace(cfg, aggregation="seq_mean")
    combined = (2 * _loss(first, seq, False) + 4 * _loss(second, seq, False)) / 6
    assert _loss(one_per_row, seq, False) == pytest.approx(combined, abs=TOL)


# ---------------------------------------------------------------------------------------------------------------
# advantages, C3PO budget, config

def test_grpo_advantages_match_numpy():
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(5, 8)).astype(np.float32)
    r = rewards.astype(np.float64)
    centred = r - r.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(grpo_advantages(jnp.asarray(rewards)), centred / (r.std(axis=1, keepdims=True) + 1e-6),
                               atol=TOL)
    np.testing.assert_allclose(grpo_advantages(jnp.asarray(rewards), scale_by_std=False), centred, atol=TOL)
    np.testing.assert_allclose(compute_advantages(jnp.asarray(rewards), LossConfig(advantage="grpo_no_std")),
                               centred, atol=TOL)
    order = rng.permutation(40)  # flat layout, groups interleaved
    flat = grpo_advantages_flat(jnp.asarray(rewards.ravel()[order]), jnp.asarray(np.repeat(np.arange(5), 8)[order]),
                                5)
    np.testing.assert_allclose(flat, (centred / (r.std(axis=1, keepdims=True) + 1e-6)).ravel()[order], atol=TOL)


def test_identical_rewards_give_zero_advantage():
    rewards = jnp.asarray([[0.1] * 7, [0.7] * 7, [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]], jnp.float32)
    for scale in (True, False):
        adv = np.asarray(grpo_advantages(rewards, scale_by_std=scale))
        assert np.all(adv[:2] == 0.0) and np.all(np.isfinite(adv)) and np.all(adv[2] != 0.0)
        flat = np.asarray(grpo_advantages_flat(rewards.ravel(), jnp.repeat(jnp.arange(3), 7), 3, scale_by_std=scale))
        assert np.all(flat[:14] == 0.0) and np.all(np.isfinite(flat))
    assert np.all(np.asarray(grpo_advantages(jnp.asarray([[1.0], [0.0]]))) == 0.0)  # group of one
    np.testing.assert_array_equal(token_advantages(jnp.asarray([2.0, -1.0]), jnp.asarray([[1, 1, 0], [1, 0, 0]])),
                                  [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


@pytest.mark.parametrize("n_valid", [1, 5, 12])
def test_c3po_divides_by_phi_not_token_count(n_valid):
    """r = k = 1 and A = 1, so every valid token's term is 1 and the loss is -n_valid / phi."""
    mask = jnp.arange(16).reshape(2, 8) < n_valid
    zeros, ones = jnp.zeros((2, 8)), jnp.ones((2, 8))
    for phi in (4.0, 409_600.0):
        loss, _ = policy_loss(zeros, zeros, zeros, ones, mask, LossConfig(aggregation="c3po"), phi=phi)
        assert float(loss) == pytest.approx(-n_valid / phi, rel=1e-6)


@pytest.mark.parametrize("kwargs, field", [
    ({"alpha": 6.0, "beta": 5.0}, "alpha"), ({"alpha": 0.0}, "alpha"), ({"alpha": -1.0}, "alpha"),
    ({"kl_coef": -1e-3}, "kl_coef"), ({"entropy_coef": -1.0}, "entropy_coef"),
    ({"load_balance_coef": -1.0}, "load_balance_coef"), ({"z_loss_coef": -1.0}, "z_loss_coef"),
    ({"correction": "clip"}, "correction"), ({"aggregation": "mean"}, "aggregation"),
    ({"advantage": "rloo"}, "advantage"),
    ({"eps_low": 1.0}, "eps_low"), ({"eps_high": -0.1}, "eps_high"), ({"tis_cap": 0.0}, "tis_cap"),
    ({"adv_eps": float("nan")}, "adv_eps"),
    ({"kpop_bound": 0.0}, "kpop_bound"), ({"kpop_bound": -1.0}, "kpop_bound"), ({"kpop_bound": INF}, "kpop_bound"),
    ({"kpop_bound": NAN}, "kpop_bound"), ({"seq_bound": 0.0}, "seq_bound"), ({"seq_bound": -0.5}, "seq_bound"),
    ({"seq_bound": INF}, "seq_bound"), ({"seq_bound": NAN}, "seq_bound"),
])
def test_bad_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LossConfig(**kwargs)


def test_bad_bound_error_names_the_key_and_value():
    with pytest.raises(ValueError, match=r"loss\.kpop_bound=-1\.0 must be > 0"):
        LossConfig(kpop_bound=-1.0)
    with pytest.raises(ValueError, match=r"loss\.seq_bound=0\.0 must be > 0"):
        LossConfig(correction="seq_mask", seq_bound=0.0)
    assert LossConfig().kpop_bound == 0.05 and LossConfig().seq_bound == 1.0


def test_phi_is_the_steps_and_only_c3po_needs_it():
    """phi comes with the step (`RLConfig.phi`, `StepBatch.phi`), not from the loss config."""
    logp, old, infer, adv, mask, _ = _example()
    for phi in (None, 0, -5.0, NAN):
        with pytest.raises(ValueError, match="phi"):
            policy_loss(logp, old, infer, adv, mask, LossConfig(aggregation="c3po"), phi=phi)
    for aggregation in ("seq_mean", "token_mean"):
        assert np.isfinite(float(policy_loss(logp, old, infer, adv, mask, LossConfig(aggregation=aggregation))[0]))


@pytest.mark.parametrize("aggregation", ["c3po", "seq_mean", "token_mean"])
@pytest.mark.parametrize("rows, packed", [(2, True), (3, False)])
def test_trainer_step_weights_are_the_loss_weights(aggregation, rows, packed):
    """The trainer's host-side weights over a step's micro-batches are the loss's own rule applied to the whole step
    as one batch, and the loss with them equals the loss that computes them itself."""
    rng = np.random.default_rng(3)
    responses = [Response(prompt_id=i, prompt=rng.integers(1, 50, 3), tokens=rng.integers(1, 50, n),
                          logp_infer=rng.normal(-2, 0.5, n), reward=0.0, advantage=float(rng.normal()))
                 for i, n in enumerate(rng.integers(2, 9, 12))]
    step, _ = assemble_step(responses, 30)
    batch = stack_micro_batches(pack_micro_batches(step, rows, 16, packed=packed), aggregation, step.phi)
    flat = {k: jnp.asarray(v.reshape(-1, *v.shape[2:])) for k, v in batch.items()}  # the step's rows as one batch
    mask, seg = flat["loss_mask"], flat["segment_ids"][:, 1:]
    want = batch_weights(mask, sequence_ids(mask, seg), aggregation, step.phi)
    np.testing.assert_allclose(np.asarray(flat["token_weights"]), np.asarray(want), rtol=1e-6, atol=0)
    cfg = LossConfig(aggregation=aggregation)
    logp = flat["logp_infer"] + 0.1
    args = (logp, flat["logp_infer"], flat["logp_infer"], flat["advantages"], mask, cfg)
    given = policy_loss(*args, segment_ids=seg, token_weights=flat["token_weights"])[0]
    own = policy_loss(*args, phi=step.phi, segment_ids=seg)[0]
    assert float(given) == pytest.approx(float(own), rel=1e-6)
