"""Reducing per-token loss terms [B, S] to a scalar; padding contributes exactly nothing.

A "sequence" is one response. Without `segment_ids` each row is one sequence; with them (packed rows) the tokens of a
row that share a segment id form one sequence. Sequences are numbered `row * S + segment` (segment ids in [0, S)),
so per-sequence sums are one `segment_sum` over B * S slots whatever the packing.
`seq_mean` averages over sequences with at least one valid token, so all-padding rows do not dilute the mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ringjax.losses.config import LossConfig
from ringjax.typing import Array, Bool, Float, Int


def sequence_ids(mask: Bool[Array, "B S"], segment_ids: Int[Array, "B S"] | None = None) -> Int[Array, "B S"]:
    """Global sequence number of every token: row * S + segment id (segment 0 when rows are not packed)."""
    b, s = mask.shape
    rows = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None] * s, (b, s))  # [B S]
    return rows if segment_ids is None else rows + segment_ids.astype(jnp.int32)


def sequence_sum(x: Float[Array, "B S"], seq: Int[Array, "B S"]) -> Float[Array, " Q"]:
    """Sum of x over each sequence; Q = B * S slots, unused slots are 0."""
    return jax.ops.segment_sum(x.ravel(), seq.ravel(), num_segments=x.size)


def masked_mean(x: Float[Array, "B S"], mask: Bool[Array, "B S"]) -> Float[Array, ""]:
    """Mean of x over valid tokens (0 when there are none)."""
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def c3po(x: Float[Array, "B S"], mask: Bool[Array, "B S"], seq: Int[Array, "B S"], cfg: LossConfig
         ) -> Float[Array, ""]:
    """C3PO (Ring-lite): sum over valid tokens / the constant budget phi, not the actual token count."""
    return jnp.sum(jnp.where(mask, x, 0.0)) / cfg.phi


def seq_mean(x: Float[Array, "B S"], mask: Bool[Array, "B S"], seq: Int[Array, "B S"], cfg: LossConfig
             ) -> Float[Array, ""]:
    """GRPO: mean over each sequence's valid tokens, then mean over non-empty sequences."""
    sums = sequence_sum(jnp.where(mask, x, 0.0), seq)  # [Q]
    counts = sequence_sum(mask.astype(jnp.float32), seq)  # [Q]
    per_seq = sums / jnp.maximum(counts, 1.0)  # [Q], 0 where empty
    return jnp.sum(per_seq) / jnp.maximum(jnp.sum(counts > 0), 1)


def token_mean(x: Float[Array, "B S"], mask: Bool[Array, "B S"], seq: Int[Array, "B S"], cfg: LossConfig
               ) -> Float[Array, ""]:
    """Sum over valid tokens / number of valid tokens (DAPO token-level loss)."""
    return masked_mean(x, mask)


AGGREGATIONS = {"c3po": c3po, "seq_mean": seq_mean, "token_mean": token_mean}
