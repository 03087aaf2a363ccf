"""Grouped-query attention of the Ling family, with an optional KV cache (pure functions).

HF stores one fused `query_key_value` matrix (rows Q heads | K heads | V heads); ringjax keeps q, k, v
separate ([H, N, D] / [H, G, D]) so each shards over heads. Ling 2.0 adds a per-head RMSNorm on q and k
before RoPE. Masks come from positions (and segment ids for packed rows), so right-padded prompts,
packed sequences and cached decoding share one code path. Long rows run in blocks of `compute.attention_chunk`
queries (`blocked_sdpa`), each building only its own [chunk, K] mask and scores.

Context parallelism (a mesh `context` axis > 1, training passes): each device holds 1/context of a row's
queries and gathers the keys, values, positions and segment ids of the whole row (`context_sdpa`), so a layer's
transient K/V is the row's and everything else stays split. Every device computes the same [S/context, S]
masked scores, so the causal mask leaves no device idle: the split is balanced without reordering tokens
(reordering pays off only for kernels that skip masked blocks). The gather was chosen over a ring of K/V blocks
because Ling's grouped-query K/V is small (8 or fewer KV heads against 64 query heads at Ring-1T), and it keeps
one attention code path.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ringjax.model.config import LingConfig
from ringjax.model.flash import flash_attention
from ringjax.model.ops import rms_norm
from ringjax.model.rope import apply_rope
from ringjax.sharding import constrain, current_mesh, logical_to_spec, tokens_split
from ringjax.typing import Array, Bool, Float, Int

BHSD = ("batch", "seq", "act_heads", "head_dim")
BKGD = ("batch", "cache_seq", "act_kv_heads", "head_dim")
BSGD = ("batch", "seq", "act_kv_heads", "head_dim")


def sdpa(q: Float[Array, "B S N D"], k: Float[Array, "B K G D"], v: Float[Array, "B K G D"],
         mask: Bool[Array, "B S K"], impl: str) -> Float[Array, "B S N D"]:
    """Scaled dot-product attention (scale 1/sqrt(D)), GQA by head groups."""
    if impl == "reference":
        b, s, n, d = q.shape
        g = k.shape[2]
        qg = q.reshape(b, s, g, n // g, d).astype(jnp.float32)
        scores = jnp.einsum("bsgrd,bkgd->bgrsk", qg, k.astype(jnp.float32)) / jnp.sqrt(jnp.float32(d))
        scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bgrsk,bkgd->bsgrd", probs, v.astype(jnp.float32))
        return out.reshape(b, s, n, d).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=impl)


def blocked_sdpa(q: Float[Array, "B S N D"], k: Float[Array, "B K G D"], v: Float[Array, "B K G D"],
                 q_pos: Int[Array, "B S"], k_pos: Int[Array, "B K"], q_seg: Int[Array, "B S"] | None,
                 k_seg: Int[Array, "B K"] | None, impl: str, chunk: int) -> Float[Array, "B S N D"]:
    """`sdpa` over blocks of `chunk` queries, each with the mask of its own positions: the scores held at once are
    [B, N, chunk, K] instead of [B, N, S, K] (a 8k-token prefill would need 256 MiB per row and head). The block
    body is rematerialised, so the backward pass holds one block's scores too. cuDNN's fused kernel never builds
    the scores and takes the whole row."""
    s = q.shape[1]
    if impl == "flash":
        return flash_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, chunk)
    if impl == "cudnn" or s <= chunk:
        return sdpa(q, k, v, attention_mask(q_pos, k_pos, q_seg, k_seg), impl)
    n = -(-s // chunk)

    def blocks(x):  # [B S ...] -> [n B chunk ...], right-padded
        x = jnp.pad(x, [(0, 0), (0, n * chunk - s)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(x.shape[0], n, chunk, *x.shape[2:]), 1, 0)

    valid = blocks(jnp.ones(q.shape[:2], bool))

    @jax.checkpoint
    def one(args):
        qb, pb, sb, vb = args
        mask = attention_mask(pb, k_pos, sb, k_seg) | ~vb[:, :, None]  # padding queries see every key: no NaN
        return sdpa(qb, k, v, mask, impl)

    out = jax.lax.map(one, (blocks(q), blocks(q_pos), None if q_seg is None else blocks(q_seg), valid))
    return jnp.moveaxis(out, 0, 1).reshape(q.shape[0], n * chunk, *q.shape[2:])[:, :s]


def context_sdpa(q: Float[Array, "B S N D"], k: Float[Array, "B S G D"], v: Float[Array, "B S G D"],
                 positions: Int[Array, "B S"], segment_ids: Int[Array, "B S"] | None, impl: str,
                 chunk: int) -> Float[Array, "B S N D"]:
    """`blocked_sdpa` with the row's tokens split over the mesh's `context` axis: each device attends its own
    queries to the keys and values of the whole row, all-gathered (their gradients come back reduce-scattered)."""
    mesh = current_mesh()
    q_spec, kv_spec, row_spec = (logical_to_spec(a, mesh) for a in (BHSD, BSGD, ("batch", "seq")))

    def gather(x):
        return jax.lax.all_gather(x, "context", axis=1, tiled=True)

    def local(q, k, v, pos, *seg):
        k_seg = gather(seg[0]) if seg else None
        return blocked_sdpa(q, gather(k), gather(v), pos, gather(pos), seg[0] if seg else None, k_seg, impl, chunk)

    args, specs = (q, k, v, positions), (q_spec, kv_spec, kv_spec, row_spec)
    if segment_ids is not None:
        args, specs = args + (segment_ids,), specs + (row_spec,)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)


def attention_mask(q_pos: Int[Array, "B S"], k_pos: Int[Array, "B K"], q_seg: Int[Array, "B S"] | None,
                   k_seg: Int[Array, "B K"] | None) -> Bool[Array, "B S K"]:
    mask = k_pos[:, None, :] <= q_pos[:, :, None]
    if q_seg is not None:
        mask &= q_seg[:, :, None] == k_seg[:, None, :]
    return mask


def attention(p: dict[str, Any], x: Float[Array, "B S H"], positions: Int[Array, "B S"],
              rope: tuple[Array, Array], segment_ids: Int[Array, "B S"] | None,
              cache: dict[str, Array] | None, cfg: LingConfig) -> tuple[Float[Array, "B S H"], dict | None]:
    """One attention block. With `cache` ({k, v: [B K G D]}), new keys are written at `positions`
    and the queries attend to every cached position <= their own."""
    dt = x.dtype
    q = jnp.einsum("bsh,hnd->bsnd", x, p["wq"].astype(dt))
    k = jnp.einsum("bsh,hgd->bsgd", x, p["wk"].astype(dt))
    v = jnp.einsum("bsh,hgd->bsgd", x, p["wv"].astype(dt))
    if cfg.use_qkv_bias:
        q, k, v = q + p["bq"].astype(dt), k + p["bk"].astype(dt), v + p["bv"].astype(dt)
    if cfg.use_qk_norm:
        q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q = constrain(q, BHSD)

    if cache is None and tokens_split(current_mesh()):
        out = context_sdpa(q, constrain(k, BSGD), constrain(v, BSGD), positions, segment_ids, cfg.compute.attention,
                           cfg.compute.attention_chunk)
        return jnp.einsum("bsnd,ndh->bsh", out, p["wo"].astype(dt)), None
    if cache is None:
        k_all, v_all, k_pos, mask_seg = k, v, positions, segment_ids
        new_cache = None
    else:
        rows = jnp.arange(x.shape[0])[:, None]
        k_all = cache["k"].at[rows, positions].set(k.astype(cache["k"].dtype), mode="drop")
        v_all = cache["v"].at[rows, positions].set(v.astype(cache["v"].dtype), mode="drop")
        k_all, v_all = constrain(k_all, BKGD), constrain(v_all, BKGD)
        new_cache = {"k": k_all, "v": v_all}
        k_pos = jnp.broadcast_to(jnp.arange(k_all.shape[1]), (x.shape[0], k_all.shape[1]))
        mask_seg = None
    out = blocked_sdpa(q, k_all.astype(dt), v_all.astype(dt), positions, k_pos, mask_seg,
                       mask_seg if cache is None else None, cfg.compute.attention, cfg.compute.attention_chunk)
    out = jnp.einsum("bsnd,ndh->bsh", out, p["wo"].astype(dt))
    return out, new_cache
