"""Train-inference mismatch corrections: a stop-gradient weight per token on the PPO term (docs/architecture.md).

Every mode is a pure function (logp_old, logp_infer, mask, seq, cfg) -> weight [B S] in `CORRECTIONS`: the trainer's
pre-update and the rollout engine's log-probs of the token the engine sampled, the valid-token mask and the sequence
id of every token (`aggregation.sequence_ids`). The modes need more than k = exp(logp_old - logp_infer) =
pi_old / pi_infer: `kpop` looks at the two probabilities themselves, which k alone does not determine.
- `none`: 1.
- `tis` (truncated importance sampling): min(k, tis_cap).
- `icepop` (Ring-1T): k if alpha <= k <= beta else 0. It MASKS outside the band, it does not clip.
- `icepop_seq`: the IcePop band applied per sequence to the geometric-mean ratio g = exp(mean_t log k_t) over the
  sequence's valid tokens; every token of a kept sequence gets weight g, every token of a rejected one 0.
  Why the geometric mean and not "mask if any token is out of band": at Ring-1T's ~1-2 per mille of out-of-band
  tokens, a 32k-64k-token response almost surely holds one, so the any-token rule would discard nearly every long
  response (a length bias); g is length-normalised, the sequence analogue of GSPO's ratio. Single extreme tokens
  inside a kept sequence are left to the token-level `icepop` mode, which this is an ablation against.
- `kpop` (the Ring team's successor of IcePop; AReaL's binary KL filter): p = pi_old and q = pi_infer of the sampled
  token are read as Bernoulli parameters ("this token" vs "any other token"), and the token is masked when
  max(KL(p||q), KL(q||p)) > kpop_bound, else it keeps the importance weight k. Strict on high-probability tokens,
  lax on rare ones: k = 10 on a token of probability 1e-4 moves 1e-3 of probability mass (binary KL ~1e-3, kept),
  while k = 1.1 on a token of probability 0.99 squeezes the rest of the vocabulary from 0.1 to 0.01 (binary KL ~0.14,
  masked), though IcePop's band keeps the latter and masks the former.
- `seq_mask` (Trust Region Masking, arXiv 2512.23075; verl's `seq_max_k*` rejection): a whole response is dropped
  when its worst token divergence max_t |log k_t| over its valid tokens exceeds seq_bound; every token of a kept
  response gets weight k. Unlike `icepop_seq` one extreme token rejects the response, so every token of a kept
  response is within the bound; the price is the length bias described above (watch `seq_masked_frac`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ringjax.losses.aggregation import sequence_sum
from ringjax.losses.config import LossConfig
from ringjax.typing import Array, Bool, Float, Int

BERNOULLI_EPS = 1e-8  # p and q are clamped to [eps, 1 - eps] before the binary KL, as AReaL does


def train_inference_ratio(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"]) -> Float[Array, "B S"]:
    """k = pi_old / pi_infer, stop-gradient."""
    return jax.lax.stop_gradient(jnp.exp(logp_old - logp_infer))


def in_band(k: Float[Array, "..."], alpha: float, beta: float) -> Bool[Array, "..."]:
    """alpha <= k <= beta (False for NaN)."""
    return (k >= alpha) & (k <= beta)


def icepop_weight(k: Float[Array, "..."], alpha: float, beta: float) -> Float[Array, "..."]:
    """M(k) = k if alpha <= k <= beta else 0."""
    return jnp.where(in_band(k, alpha, beta), k, 0.0)


def bernoulli_kl(logp: Float[Array, "..."], logq: Float[Array, "..."], eps: float = BERNOULLI_EPS
                 ) -> Float[Array, "..."]:
    """KL(Bernoulli(p) || Bernoulli(q)) = p log(p/q) + (1-p) log((1-p)/(1-q)), p and q clamped to [eps, 1 - eps].

    Computed from the log-probabilities, with 1 - p = -expm1(log p): in float32 1 - 1e-8 rounds to 1, so clamping p
    itself would leave 1 - p = 0 and a NaN for a token of probability 1; the clamp on log p keeps 1 - p >= ~eps.
    """
    lo, hi = math.log(eps), math.log1p(-eps)
    logp, logq = jnp.clip(logp, lo, hi), jnp.clip(logq, lo, hi)
    p, not_p, not_q = jnp.exp(logp), -jnp.expm1(logp), -jnp.expm1(logq)
    return p * (logp - logq) + not_p * (jnp.log(not_p) - jnp.log(not_q))


def binary_kl(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"]) -> Float[Array, "B S"]:
    """kpop's divergence max(KL(p||q), KL(q||p)) of p = pi_old, q = pi_infer of each token, stop-gradient."""
    logp_old, logp_infer = jax.lax.stop_gradient(logp_old), jax.lax.stop_gradient(logp_infer)
    return jnp.maximum(bernoulli_kl(logp_old, logp_infer), bernoulli_kl(logp_infer, logp_old))


def kpop_keep(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"], bound: float) -> Bool[Array, "B S"]:
    """binary KL <= bound (False for NaN: a token with garbage log-probs is masked, as IcePop does)."""
    return binary_kl(logp_old, logp_infer) <= bound


def sequence_max_log_ratio(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"], mask: Bool[Array, "B S"],
                           seq: Int[Array, "B S"]) -> Float[Array, " Q"]:
    """max_t |log k_t| over each sequence's valid tokens, stop-gradient; Q = B * S slots, unused slots are 0.

    A NaN |log k| counts as +inf, so that a sequence holding one is rejected by any bound.
    """
    dev = jax.lax.stop_gradient(jnp.abs(logp_old - logp_infer))  # |log k|, without overflowing exp
    dev = jnp.where(mask, jnp.where(jnp.isnan(dev), jnp.inf, dev), 0.0)
    return jnp.maximum(jax.ops.segment_max(dev.ravel(), seq.ravel(), num_segments=dev.size), 0.0)


def seq_keep(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"], mask: Bool[Array, "B S"],
             seq: Int[Array, "B S"], bound: float) -> Bool[Array, " Q"]:
    """Per sequence slot: max_t |log k_t| <= bound."""
    return sequence_max_log_ratio(logp_old, logp_infer, mask, seq) <= bound


CorrectionFn = Callable[[Array, Array, Array, Array, LossConfig], Array]  # (logp_old, logp_infer, mask, seq, cfg)


def _none(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"], mask: Bool[Array, "B S"],
          seq: Int[Array, "B S"], cfg: LossConfig) -> Float[Array, "B S"]:
    return jnp.ones_like(logp_old)


def _tis(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"], mask: Bool[Array, "B S"],
         seq: Int[Array, "B S"], cfg: LossConfig) -> Float[Array, "B S"]:
    return jnp.minimum(train_inference_ratio(logp_old, logp_infer), cfg.tis_cap)


def _icepop(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"], mask: Bool[Array, "B S"],
            seq: Int[Array, "B S"], cfg: LossConfig) -> Float[Array, "B S"]:
    return icepop_weight(train_inference_ratio(logp_old, logp_infer), cfg.alpha, cfg.beta)


def _icepop_seq(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"], mask: Bool[Array, "B S"],
                seq: Int[Array, "B S"], cfg: LossConfig) -> Float[Array, "B S"]:
    log_k = jax.lax.stop_gradient(logp_old - logp_infer)
    sums = sequence_sum(jnp.where(mask, log_k, 0.0), seq)  # [Q]
    counts = sequence_sum(mask.astype(jnp.float32), seq)  # [Q]
    g = jnp.exp(sums / jnp.maximum(counts, 1.0))[seq]  # [B S] geometric-mean ratio of each token's sequence
    return icepop_weight(g, cfg.alpha, cfg.beta)


def _kpop(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"], mask: Bool[Array, "B S"],
          seq: Int[Array, "B S"], cfg: LossConfig) -> Float[Array, "B S"]:
    keep = kpop_keep(logp_old, logp_infer, cfg.kpop_bound)
    return jnp.where(keep, train_inference_ratio(logp_old, logp_infer), 0.0)


def _seq_mask(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"], mask: Bool[Array, "B S"],
              seq: Int[Array, "B S"], cfg: LossConfig) -> Float[Array, "B S"]:
    keep = seq_keep(logp_old, logp_infer, mask, seq, cfg.seq_bound)[seq]  # [B S]
    return jnp.where(keep, train_inference_ratio(logp_old, logp_infer), 0.0)


CORRECTIONS: dict[str, CorrectionFn] = {"none": _none, "tis": _tis, "icepop": _icepop, "icepop_seq": _icepop_seq,
                                        "kpop": _kpop, "seq_mask": _seq_mask}
