"""Reducing per-token loss terms [B, S] to a scalar: sum over valid tokens of weight * term; padding weighs 0.

Every aggregation is a per-token weight (`AGGREGATIONS`, name -> pure formula of token counts), so ONE rule serves
both callers: `batch_weights` counts over the batch it is given (`policy_loss` called on a whole step), the trainer's
`ringjax.trainer.batch.step_weights` counts over all micro-batches of a step on the host, so that micro-batch
losses add up exactly to the step's loss. The formulas use arithmetic only and work on numpy and jax values alike.
- `c3po` (Ring-lite, arXiv 2506.14731): 1 / phi, the step's constant token budget, not its actual token count;
  phi is passed in by whoever owns the step (`RLConfig.phi`, `StepBatch.phi`);
- `token_mean` (DAPO token-level loss): 1 / (valid tokens);
- `seq_mean` (GRPO): 1 / (tokens of the token's sequence * non-empty sequences), i.e. the mean over each sequence,
  then the mean over sequences; all-padding rows do not dilute it.

A "sequence" is one response. Without `segment_ids` each row is one sequence; with them (packed rows) the tokens of a
row that share a segment id form one sequence. Sequences are numbered `row * S + segment` (segment ids in [0, S)),
so per-sequence sums are one `segment_sum` over B * S slots whatever the packing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ringjax.typing import Array, Bool, Float, Int

Count = Array | np.ndarray | int | float  # jax (in `policy_loss`) or numpy (the trainer's host side)


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


# Each rule: (tokens of each token's sequence [B S] (>= 1), valid tokens of the step (>= 1), non-empty sequences of
# the step (>= 1), phi) -> weight of each valid token, a scalar or [B S].

def c3po(seq_tokens: Count, tokens: Count, sequences: Count, phi: float | None) -> Count:
    """C3PO (Ring-lite): 1 / phi, the constant budget, whatever the actual token count."""
    if phi is None or not phi > 0:  # also rejects NaN
        raise ValueError(f"aggregation 'c3po' needs the step's token budget phi > 0, got phi={phi}")
    return 1.0 / phi


def seq_mean(seq_tokens: Count, tokens: Count, sequences: Count, phi: float | None) -> Count:
    """GRPO: mean over each sequence's valid tokens, then mean over non-empty sequences."""
    return 1.0 / (seq_tokens * sequences)


def token_mean(seq_tokens: Count, tokens: Count, sequences: Count, phi: float | None) -> Count:
    """Sum over valid tokens / number of valid tokens (DAPO token-level loss)."""
    return 1.0 / tokens


AGGREGATIONS = {"c3po": c3po, "seq_mean": seq_mean, "token_mean": token_mean}


def batch_weights(mask: Bool[Array, "B S"], seq: Int[Array, "B S"], aggregation: str,
                  phi: float | None = None) -> Float[Array, "B S"]:
    """Per-token weights of `aggregation` with the batch as the whole step (0 off the mask)."""
    counts = sequence_sum(mask.astype(jnp.float32), seq)  # [Q]
    seq_tokens = jnp.maximum(counts[seq], 1.0)  # [B S]
    tokens = jnp.maximum(jnp.sum(mask), 1)
    sequences = jnp.maximum(jnp.sum(counts > 0), 1)
    return jnp.where(mask, AGGREGATIONS[aggregation](seq_tokens, tokens, sequences, phi), 0.0)
