"""Train-inference mismatch corrections: a stop-gradient weight per token on the PPO term (docs/architecture.md).

k = exp(logp_old - logp_infer) = pi_old / pi_infer for the token the rollout engine sampled.
- `none`: 1.
- `tis` (truncated importance sampling): min(k, tis_cap).
- `icepop` (Ring-1T): k if alpha <= k <= beta else 0. It MASKS outside the band, it does not clip.
- `icepop_seq`: the IcePop band applied per sequence to the geometric-mean ratio g = exp(mean_t log k_t) over the
  sequence's valid tokens; every token of a kept sequence gets weight g, every token of a rejected one 0.
  Why the geometric mean and not "mask if any token is out of band": at Ring-1T's ~1-2 per mille of out-of-band
  tokens, a 32k-64k-token response almost surely holds one, so the any-token rule would discard nearly every long
  response (a length bias); g is length-normalised, the sequence analogue of GSPO's ratio. Single extreme tokens
  inside a kept sequence are left to the token-level `icepop` mode, which this is an ablation against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ringjax.losses.aggregation import sequence_sum
from ringjax.losses.config import LossConfig
from ringjax.typing import Array, Bool, Float, Int


def train_inference_ratio(logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"]) -> Float[Array, "B S"]:
    """k = pi_old / pi_infer, stop-gradient."""
    return jax.lax.stop_gradient(jnp.exp(logp_old - logp_infer))


def in_band(k: Float[Array, "..."], alpha: float, beta: float) -> Bool[Array, "..."]:
    """alpha <= k <= beta (False for NaN)."""
    return (k >= alpha) & (k <= beta)


def icepop_weight(k: Float[Array, "..."], alpha: float, beta: float) -> Float[Array, "..."]:
    """M(k) = k if alpha <= k <= beta else 0."""
    return jnp.where(in_band(k, alpha, beta), k, 0.0)


def _none(k: Float[Array, "B S"], mask: Bool[Array, "B S"], seq: Int[Array, "B S"], cfg: LossConfig
          ) -> Float[Array, "B S"]:
    return jnp.ones_like(k)


def _tis(k: Float[Array, "B S"], mask: Bool[Array, "B S"], seq: Int[Array, "B S"], cfg: LossConfig
         ) -> Float[Array, "B S"]:
    return jnp.minimum(k, cfg.tis_cap)


def _icepop(k: Float[Array, "B S"], mask: Bool[Array, "B S"], seq: Int[Array, "B S"], cfg: LossConfig
            ) -> Float[Array, "B S"]:
    return icepop_weight(k, cfg.alpha, cfg.beta)


def _icepop_seq(k: Float[Array, "B S"], mask: Bool[Array, "B S"], seq: Int[Array, "B S"], cfg: LossConfig
                ) -> Float[Array, "B S"]:
    log_k = sequence_sum(jnp.where(mask, jnp.log(k), 0.0), seq)  # [Q]
    counts = sequence_sum(mask.astype(jnp.float32), seq)  # [Q]
    g = jnp.exp(log_k / jnp.maximum(counts, 1.0))[seq]  # [B S] geometric-mean ratio of each token's sequence
    return icepop_weight(g, cfg.alpha, cfg.beta)


CORRECTIONS = {"none": _none, "tis": _tis, "icepop": _icepop, "icepop_seq": _icepop_seq}
