"""Decoder layers: parameter layout of one layer and the scanned stack (pure functions).

A layer is pre-norm: `x += Attn(norm(x)); x += MLP_or_MoE(norm(x))`. Layers of the same kind are
stored stacked along a leading `layers` axis and run with `lax.scan`, so compile time does not grow
with depth (80 layers for Ling-1T). Ling 2.0 has `first_k_dense_replace` dense layers followed by MoE
layers: two stacks, scanned one after the other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ringjax.model.attention import attention
from ringjax.model.config import LingConfig
from ringjax.model.moe import moe_block
from ringjax.model.ops import rms_norm, swiglu
from ringjax.sharding import constrain
from ringjax.typing import Array, Float, Int

ACT = ("batch", "seq", "act_embed")


class ParamSpec(NamedTuple):
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: str  # "normal" | "ones" | "zeros"


def layer_spec(cfg: LingConfig, moe: bool) -> dict[str, ParamSpec]:
    """Shapes, logical axes and initialisers of one decoder layer's parameters (HF [out, in] transposed)."""
    h, n, g, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    spec = {
        "attn_norm": ParamSpec((h,), ("norm",), "ones"),
        "wq": ParamSpec((h, n, d), ("embed", "heads", "head_dim"), "normal"),
        "wk": ParamSpec((h, g, d), ("embed", "kv_heads", "head_dim"), "normal"),
        "wv": ParamSpec((h, g, d), ("embed", "kv_heads", "head_dim"), "normal"),
        "wo": ParamSpec((n, d, h), ("heads", "head_dim", "embed"), "normal"),
        "mlp_norm": ParamSpec((h,), ("norm",), "ones"),
    }
    if cfg.use_qkv_bias:
        spec["bq"] = ParamSpec((n, d), ("heads", "head_dim"), "zeros")
        spec["bk"] = ParamSpec((g, d), ("kv_heads", "head_dim"), "zeros")
        spec["bv"] = ParamSpec((g, d), ("kv_heads", "head_dim"), "zeros")
    if cfg.use_qk_norm:
        spec["q_norm"] = ParamSpec((d,), ("norm",), "ones")
        spec["k_norm"] = ParamSpec((d,), ("norm",), "ones")
    if not moe:
        f = cfg.intermediate_size
        spec["mlp_wg"] = ParamSpec((h, f), ("embed", "mlp"), "normal")
        spec["mlp_wu"] = ParamSpec((h, f), ("embed", "mlp"), "normal")
        spec["mlp_wd"] = ParamSpec((f, h), ("mlp", "embed"), "normal")
        return spec
    e, f = cfg.num_experts, cfg.moe_intermediate_size
    spec["router"] = ParamSpec((h, e), ("embed", "router_expert"), "normal")
    if cfg.use_expert_bias:
        spec["expert_bias"] = ParamSpec((e,), ("router_expert",), "zeros")
    spec["wg"] = ParamSpec((e, h, f), ("expert", "embed", "expert_mlp"), "normal")
    spec["wu"] = ParamSpec((e, h, f), ("expert", "embed", "expert_mlp"), "normal")
    spec["wd"] = ParamSpec((e, f, h), ("expert", "expert_mlp", "embed"), "normal")
    if cfg.num_shared_experts:
        fs = cfg.shared_intermediate_size
        spec["shared_wg"] = ParamSpec((h, fs), ("embed", "mlp"), "normal")
        spec["shared_wu"] = ParamSpec((h, fs), ("embed", "mlp"), "normal")
        spec["shared_wd"] = ParamSpec((fs, h), ("mlp", "embed"), "normal")
    return spec


class LayerAux(NamedTuple):
    """Per-layer router statistics and expert ids, stacked over a stack's layers (ids [L B S X]; X = 0 for a dense
    stack)."""

    load_balance: Float[Array, " L"]
    z_loss: Float[Array, " L"]
    experts: Int[Array, "L B S X"]  # experts each token used (the replayed ones under router replay)
    chosen: Int[Array, "L B S X"]  # the router's own top-k (equal to `experts` without replay)


def decoder_layer(x: Float[Array, "B S H"], p: dict[str, Array], positions: Int[Array, "B S"],
                  rope: tuple[Array, Array], segment_ids: Int[Array, "B S"] | None, cache: dict | None,
                  cfg: LingConfig, moe: bool, replay: Int[Array, "B S X"] | None = None
                  ) -> tuple[Float[Array, "B S H"], dict | None, LayerAux]:
    eps = cfg.rms_norm_eps
    attn_out, cache = attention(p, rms_norm(x, p["attn_norm"], eps), positions, rope, segment_ids, cache, cfg)
    x = constrain(x + attn_out, ACT)
    h = rms_norm(x, p["mlp_norm"], eps)
    b, s = x.shape[:2]
    if moe:
        mlp_out, routing = moe_block(p, h, cfg, replay)
        aux = LayerAux(routing.load_balance, routing.z_loss, routing.experts.reshape(b, s, -1),
                       routing.chosen.reshape(b, s, -1))
    else:
        mlp_out = swiglu(h, p["mlp_wg"], p["mlp_wu"], p["mlp_wd"])
        none = jnp.zeros((b, s, 0), jnp.int32)
        aux = LayerAux(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), none, none)
    return constrain(x + mlp_out, ACT), cache, aux


_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def run_stack(x: Float[Array, "B S H"], params: dict[str, Array], positions: Int[Array, "B S"],
              rope: tuple[Array, Array], segment_ids: Int[Array, "B S"] | None, cache: dict | None,
              cfg: LingConfig, moe: bool, replay: Int[Array, "L B S X"] | None = None
              ) -> tuple[Float[Array, "B S H"], dict | None, LayerAux]:
    """Scans `decoder_layer` over stacked parameters [L ...] (and a stacked cache [L B K G D], replayed expert ids
    [L B S X])."""

    def body(carry, layer):
        p, c, r = layer
        y, c, aux = decoder_layer(carry, p, positions, rope, segment_ids, c, cfg, moe, r)
        return y, (c, aux)

    if cfg.compute.remat != "none":
        body = jax.checkpoint(body, policy=_POLICIES[cfg.compute.remat], prevent_cse=False)
    x, (cache, aux) = jax.lax.scan(body, x, (params, cache, replay))
    return x, cache, aux


def stack_arrays(values: dict[str, Any]) -> dict[str, Array]:
    """Plain arrays of a stack's variables (drops the NNX wrappers before `lax.scan`)."""
    return {k: v[...] for k, v in values.items()}
