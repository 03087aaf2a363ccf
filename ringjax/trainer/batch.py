"""Host side of a step: micro-batches stacked into one [N, ...] array dict, with whole-step token weights.

The train step scans over the N micro-batches and adds their gradients. For the sum to be exactly the gradient of
the step's loss whatever the aggregation, each token's term is weighted by a constant computed here over the
WHOLE step (`policy_loss(..., token_weights=...)`):
- `c3po`: 1 / phi (the constant budget, Ring-lite);
- `token_mean`: 1 / (masked tokens in the step);
- `seq_mean`: 1 / (tokens of the token's response in the step * responses in the step) (GRPO).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ringjax.losses import LossConfig
from ringjax.trainer.c3po import MicroBatch


def aggregation_weights(micro_batches: Sequence[MicroBatch], cfg: LossConfig) -> list[np.ndarray]:
    """Per-token weight [B, S-1] of every micro-batch (0 off the loss mask)."""
    tokens = sum(int(mb.loss_mask.sum()) for mb in micro_batches)
    if tokens == 0:
        raise ValueError("the step has no masked (response) tokens")
    sequences = len({int(i) for mb in micro_batches for i in np.unique(mb.seq_index[mb.loss_mask])})
    out = []
    for mb in micro_batches:
        if cfg.aggregation == "c3po":
            w = np.full(mb.loss_mask.shape, 1.0 / cfg.phi)
        elif cfg.aggregation == "token_mean":
            w = np.full(mb.loss_mask.shape, 1.0 / tokens)
        else:  # seq_mean
            w = 1.0 / (np.maximum(mb.response_len, 1) * sequences)
        out.append(np.where(mb.loss_mask, w, 0.0).astype(np.float32))
    return out


def stack_micro_batches(micro_batches: Sequence[MicroBatch], cfg: LossConfig) -> dict[str, np.ndarray]:
    """{field: [N, ...]} of the micro-batches plus `token_weights`; all micro-batches must share one shape."""
    if not micro_batches:
        raise ValueError("no micro-batches")
    shapes = {mb.tokens.shape for mb in micro_batches}
    if len(shapes) != 1:
        raise ValueError(f"micro-batches of different shapes {sorted(shapes)}: pack them with one (rows, seq_len)")
    fields = ("tokens", "positions", "segment_ids", "loss_mask", "logp_infer", "advantages")
    out = {f: np.stack([getattr(mb, f) for mb in micro_batches]) for f in fields}
    out["token_weights"] = np.stack(aggregation_weights(micro_batches, cfg))
    return out
