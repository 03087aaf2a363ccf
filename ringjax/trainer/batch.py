"""Host side of a step: micro-batches stacked into one [N, ...] array dict, with whole-step token weights.

The train step runs over the N micro-batches and adds their gradients. For the sum to be exactly the gradient of
the step's loss whatever the aggregation, each token's term is weighted by the aggregation's rule
(`ringjax.losses.aggregation.AGGREGATIONS`, the one the loss applies to a single batch) with the counts of the
WHOLE step (`policy_loss(..., token_weights=...)`): e.g. `c3po` 1 / phi, `token_mean` 1 / (masked tokens in the
step), `seq_mean` 1 / (tokens of the token's response in the step * responses in the step).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ringjax.losses import AGGREGATIONS
from ringjax.trainer.c3po import MicroBatch


def step_weights(micro_batches: Sequence[MicroBatch], aggregation: str, phi: float) -> list[np.ndarray]:
    """Per-token weight [B, S-1] of every micro-batch (0 off the loss mask); `phi` is the step's token budget."""
    tokens = sum(int(mb.loss_mask.sum()) for mb in micro_batches)
    if tokens == 0:
        raise ValueError("the step has no masked (response) tokens")
    sequences = len({int(i) for mb in micro_batches for i in np.unique(mb.seq_index[mb.loss_mask])})
    rule = AGGREGATIONS[aggregation]
    return [np.where(mb.loss_mask, rule(np.maximum(mb.response_len, 1), tokens, sequences, phi), 0.0).astype(np.float32)
            for mb in micro_batches]


def stack_micro_batches(micro_batches: Sequence[MicroBatch], aggregation: str, phi: float) -> dict[str, np.ndarray]:
    """{field: [N, ...]} of the micro-batches plus `token_weights` (`step_weights`); all must share one shape.
    `routes` (engine expert ids, int16) is included when every micro-batch has it."""
    if not micro_batches:
        raise ValueError("no micro-batches")
    shapes = {mb.tokens.shape for mb in micro_batches}
    if len(shapes) != 1:
        raise ValueError(f"micro-batches of different shapes {sorted(shapes)}: pack them with one (rows, seq_len)")
    fields = ("tokens", "positions", "segment_ids", "loss_mask", "logp_infer", "advantages", "versions")
    if all(mb.routes is not None for mb in micro_batches):
        fields += ("routes",)
    out = {f: np.stack([getattr(mb, f) for mb in micro_batches]) for f in fields}
    out["token_weights"] = np.stack(step_weights(micro_batches, aggregation, phi))
    return out
