"""Mixture-of-experts block: route, run only the selected experts, add the shared experts.

`sum_j w_j * Expert_j(x) + Shared(x)`, experts being SwiGLU. Routed rows are sorted by expert and
multiplied with a grouped matmul (grouped_matmul.py). Under a mesh whose `expert` axis is > 1 the
block runs in `shard_map`: each device all-gathers the tokens of its expert group, computes only its
local experts, and a reduce-scatter returns each token's sum (an all-gather EP scheme, one collective
each way). FSDP-sharded expert weights are gathered per layer; a `tensor`-sharded expert width is
reduced with psum. The `dense` impl runs every expert on every token and is a test reference only.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from ringjax.model.config import LingConfig
from ringjax.model.grouped_matmul import grouped_matmul, resolve_impl
from ringjax.model.ops import swiglu
from ringjax.model.routing import Routing, route
from ringjax.sharding import current_mesh, logical_to_spec
from ringjax.typing import Array, Float, Int

EXPERT_IN = ("expert", "embed", "expert_mlp")
EXPERT_OUT = ("expert", "expert_mlp", "embed")


def routed_experts(x: Float[Array, "T H"], weights: Float[Array, "T X"], experts: Int[Array, "T X"],
                   wg: Float[Array, "E H F"], wu: Float[Array, "E H F"], wd: Float[Array, "E F H"],
                   impl: str, first_expert: int | Array = 0) -> Float[Array, "T H"]:
    """Weighted sum of the selected experts' outputs, for the experts [first_expert, first_expert + E)."""
    t, h = x.shape
    n_local = wg.shape[0]
    dt = x.dtype
    local = experts.reshape(-1) - first_expert  # [M]
    mine = (local >= 0) & (local < n_local)
    local = jnp.where(mine, local, n_local)  # other devices' experts sort last and are not computed
    order = jnp.argsort(local, stable=True)  # [M]
    token = order // experts.shape[1]  # [M] source token of each sorted row
    sizes = jnp.bincount(local, length=n_local + 1)[:n_local].astype(jnp.int32)  # [E]
    rows = x[token]  # [M H]
    gate = grouped_matmul(rows, wg.astype(dt), sizes, impl)  # [M F]
    up = grouped_matmul(rows, wu.astype(dt), sizes, impl)  # [M F]
    out = grouped_matmul(jax.nn.silu(gate) * up, wd.astype(dt), sizes, impl)  # [M H]
    w = jnp.where(mine, weights.reshape(-1), 0.0)[order].astype(dt)  # [M]
    return jnp.zeros((t, h), dt).at[token].add(out * w[:, None])


def dense_experts(x: Float[Array, "T H"], weights: Float[Array, "T X"], experts: Int[Array, "T X"],
                  wg: Float[Array, "E H F"], wu: Float[Array, "E H F"],
                  wd: Float[Array, "E F H"]) -> Float[Array, "T H"]:
    """Every expert on every token; the reference the grouped paths are tested against."""
    dt = x.dtype
    combine = jnp.sum(jax.nn.one_hot(experts, wg.shape[0], dtype=jnp.float32) * weights[..., None], axis=1)  # [T E]
    hidden = jax.nn.silu(jnp.einsum("th,ehf->etf", x, wg.astype(dt))) * jnp.einsum("th,ehf->etf", x, wu.astype(dt))
    out = jnp.einsum("etf,efh->eth", hidden, wd.astype(dt))  # [E T H]
    return jnp.einsum("eth,te->th", out, combine.astype(dt))


def _axes_at(spec: PartitionSpec, dim: int) -> tuple[str, ...]:
    part = spec[dim] if dim < len(spec) else None
    return (part,) if isinstance(part, str) else tuple(part or ())


def _sharded_experts(x: Float[Array, "B S H"], routing: Routing, p: dict[str, Any], impl: str) -> Float[Array, "B S H"]:
    mesh = current_mesh()
    batch_spec = logical_to_spec(("batch", "seq", None), mesh)  # tokens split over context when it is > 1
    n_batch = math.prod(mesh.shape[a] for a in _axes_at(batch_spec, 0))
    if x.shape[0] % n_batch:
        raise ValueError(f"batch {x.shape[0]} is not divisible by the mesh batch axes {_axes_at(batch_spec, 0)} "
                         f"(size {n_batch}); choose a batch that is, or a smaller data/fsdp/expert mesh")
    in_spec, out_spec = logical_to_spec(EXPERT_IN, mesh), logical_to_spec(EXPERT_OUT, mesh)
    ep = mesh.shape["expert"]
    gather = _axes_at(in_spec, 1)  # expert weights sharded ZeRO-3 style over `embed` (fsdp, context)
    reduce_tp = "tensor" in _axes_at(in_spec, 2)  # expert width split: partial sums over `tensor`

    def local(xb, wb, eb, wg, wu, wd):
        b, s, h = xb.shape
        xt, wt, et = xb.reshape(b * s, h), wb.reshape(b * s, -1), eb.reshape(b * s, -1)
        if gather:
            wg = jax.lax.all_gather(wg, gather, axis=1, tiled=True)
            wu = jax.lax.all_gather(wu, gather, axis=1, tiled=True)
            wd = jax.lax.all_gather(wd, gather, axis=2, tiled=True)
        if ep > 1:
            xt, wt, et = (jax.lax.all_gather(a, "expert", axis=0, tiled=True) for a in (xt, wt, et))
        first = jax.lax.axis_index("expert") * wg.shape[0] if ep > 1 else 0
        out = routed_experts(xt, wt, et, wg, wu, wd, impl, first)
        if reduce_tp:
            out = jax.lax.psum(out, "tensor")
        if ep > 1:
            out = jax.lax.psum_scatter(out, "expert", scatter_dimension=0, tiled=True)
        return out.reshape(b, s, h)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(batch_spec, batch_spec, batch_spec, in_spec, in_spec, out_spec),
                       out_specs=batch_spec, check_vma=False)
    return fn(x, routing.weights, routing.experts, p["wg"], p["wu"], p["wd"])


def moe_block(p: dict[str, Any], x: Float[Array, "B S H"], cfg: LingConfig,
              replay: Int[Array, "B S X"] | None = None) -> tuple[Float[Array, "B S H"], Routing]:
    """`replay`: expert ids to use instead of the router's top-k (router replay; rows with a negative id route
    themselves)."""
    b, s, h = x.shape
    flat_replay = None if replay is None else replay.reshape(b * s, -1)
    routing = route(x.reshape(b * s, h), p["router"], p.get("expert_bias"), cfg, flat_replay)
    impl = resolve_impl(cfg.compute.moe, b * s * cfg.num_experts_per_tok, cfg.num_experts)
    if impl == "dense":
        out = dense_experts(x.reshape(b * s, h), routing.weights, routing.experts, p["wg"], p["wu"], p["wd"])
        out = out.reshape(b, s, h)
    elif current_mesh() is not None:
        shaped = routing._replace(weights=routing.weights.reshape(b, s, -1), experts=routing.experts.reshape(b, s, -1))
        out = _sharded_experts(x, shaped, p, impl)
    else:
        out = routed_experts(x.reshape(b * s, h), routing.weights, routing.experts, p["wg"], p["wu"], p["wd"], impl)
        out = out.reshape(b, s, h)
    if cfg.num_shared_experts:
        out = out + swiglu(x, p["shared_wg"], p["shared_wu"], p["shared_wd"])
    return out, routing
