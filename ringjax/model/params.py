"""Total and active parameter counts of a config, from its abstract model (no memory allocated).

Counting convention (the one the Ling / Ring model cards use):
- MTP layers (`num_nextn_predict_layers`) are excluded from both counts: they are not part of the
  next-token forward pass.
- `ExpertBias` buffers are excluded from both counts (only `nnx.Param` is counted): they are routing
  state, not trained weights (E floats per MoE layer).
- Active = every parameter a token touches: everything except the routed experts that are not
  selected, i.e. per MoE layer `num_experts_per_tok` of `num_experts` routed experts. Embeddings,
  LM head, router and shared experts count in full.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from flax import nnx

from ringjax.model.config import LingConfig
from ringjax.model.create import abstract_model

ROUTED = ("wg", "wu", "wd")  # per-expert weights [L E ...] of a MoE stack


class ParamCount(NamedTuple):
    total: int
    active: int


def count_params(cfg: LingConfig) -> ParamCount:
    """(total, active) parameters of the main stack; see the module docstring for the convention."""
    state = nnx.state(abstract_model(cfg), nnx.Param)
    total = active = 0
    for path, variable in nnx.to_flat_state(state):
        if path[0] == "mtp":
            continue
        size = math.prod(variable.shape)
        total += size
        if path[0] == "moe_layers" and path[-1] in ROUTED:
            size = size // cfg.num_experts * cfg.num_experts_per_tok
        active += size
    return ParamCount(total, active)
