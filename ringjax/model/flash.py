"""Memory-efficient attention in plain JAX (`compute.attention: flash`): queries in blocks, keys in blocks, an
online softmax across the key blocks, and a backward pass of its own (Dao et al. 2022, "FlashAttention").

`blocked_sdpa`'s other implementations hold one [chunk, K] block of scores at a time, K the whole row: at Ring-1T's
69,632-token rows that block is gigabytes per layer. Here a query block walks the key blocks keeping a running max
m, sum l and weighted values acc per query (float32), so nothing larger than [chunk, chunk] scores per head is
held. The forward saves only the output and lse = m + log l per query; the backward recomputes each block's
probabilities p = exp(s - lse) and accumulates
    dv += p^T do,  ds = p * (do v^T - rowsum(do * o)),  dq += ds k / sqrt(D),  dk += ds^T q / sqrt(D).
Masks come from positions and segment ids as everywhere else; a query that sees no key (padding) gets zeros.
Grouped-query heads are kept as [G, R] (R query heads per KV head), so K and V are never repeated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ringjax.typing import Array, Float, Int

_F32 = jnp.float32
_FAR = np.iinfo(np.int32).max  # position of a padding key: after every query, so no query sees it


def _pad(x: Array, n: int, value) -> Array:
    """`x` [B, S, ...] right-padded to n rows along S with `value`."""
    return jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def _blocks(x: Array, size: int) -> Array:
    """[B, n * size, ...] -> [n, B, size, ...]."""
    return jnp.moveaxis(x.reshape(x.shape[0], -1, size, *x.shape[2:]), 1, 0)


def _unblocks(x: Array) -> Array:
    """[n, B, size, ...] -> [B, n * size, ...]."""
    return jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def _scores(qb, kb, qp, kp, qs, ks, scale):
    """Masked float32 scores [B, G, R, Q, C] of a query block against a key block."""
    s = jnp.einsum("bqgrd,bkgd->bgrqk", qb, kb, preferred_element_type=_F32) * scale
    mask = (kp[:, None, :] <= qp[:, :, None]) & (qs[:, :, None] == ks[:, None, :])  # [B Q C]
    return jnp.where(mask[:, None, None], s, -jnp.inf)


def _forward(q, k, v, qp, kp, qs, ks, q_chunk, k_chunk):
    """(out [B S G R D] in q's dtype, lse [B G R S] float32) on padded inputs."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    kblocks = (_blocks(k, k_chunk), _blocks(v, k_chunk), _blocks(kp, k_chunk), _blocks(ks, k_chunk))

    def one_query_block(args):
        qb, qpb, qsb = args
        b, qc, g, r, d = qb.shape

        def step(carry, blk):
            m, total, acc = carry
            kb, vb, kpb, ksb = blk
            s = _scores(qb, kb, qpb, kpb, qsb, ksb, scale)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row with no key yet: nothing to shift
            p = jnp.exp(s - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            total = total * corr + jnp.sum(p, axis=-1)
            acc = acc * corr[..., None] + jnp.einsum("bgrqk,bkgd->bgrqd", p.astype(vb.dtype), vb,
                                                     preferred_element_type=_F32)
            return (m_new, total, acc), None

        init = (jnp.full((b, g, r, qc), -jnp.inf, _F32), jnp.zeros((b, g, r, qc), _F32),
                jnp.zeros((b, g, r, qc, d), _F32))
        (m, total, acc), _ = jax.lax.scan(step, init, kblocks)
        seen = total > 0
        out = jnp.where(seen[..., None], acc / jnp.where(seen, total, 1.0)[..., None], 0.0)
        lse = jnp.where(seen, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(jnp.where(seen, total, 1.0)), 0.0)
        return jnp.einsum("bgrqd->bqgrd", out).astype(qb.dtype), lse

    out, lse = jax.lax.map(one_query_block, (_blocks(q, q_chunk), _blocks(qp, q_chunk), _blocks(qs, q_chunk)))
    return _unblocks(out), jnp.moveaxis(lse, 0, 3).reshape(*lse.shape[1:4], -1)  # lse [n B G R Q] -> [B G R S]


def _backward(q, k, v, qp, kp, qs, ks, out, lse, dout, q_chunk, k_chunk):
    scale = 1.0 / np.sqrt(q.shape[-1])
    kblocks = (_blocks(k, k_chunk), _blocks(v, k_chunk), _blocks(kp, k_chunk), _blocks(ks, k_chunk))
    lse_blocks = jnp.moveaxis(lse.reshape(*lse.shape[:3], -1, q_chunk), 3, 0)  # [n B G R Q]
    qblocks = (_blocks(q, q_chunk), _blocks(qp, q_chunk), _blocks(qs, q_chunk), _blocks(out, q_chunk),
               _blocks(dout, q_chunk), lse_blocks)

    def one_query_block(dkv, args):
        qb, qpb, qsb, ob, dob, lseb = args
        delta = jnp.einsum("bqgrd,bqgrd->bgrq", dob.astype(_F32), ob.astype(_F32))

        def step(dq, blk):
            kb, vb, kpb, ksb = blk
            p = jnp.exp(_scores(qb, kb, qpb, kpb, qsb, ksb, scale) - lseb[..., None])  # masked: exp(-inf) = 0
            dv = jnp.einsum("bgrqk,bqgrd->bkgd", p, dob, preferred_element_type=_F32)
            dp = jnp.einsum("bqgrd,bkgd->bgrqk", dob, vb, preferred_element_type=_F32)
            ds = p * (dp - delta[..., None]) * scale
            dq = dq + jnp.einsum("bgrqk,bkgd->bqgrd", ds, kb.astype(_F32))
            dk = jnp.einsum("bgrqk,bqgrd->bkgd", ds, qb.astype(_F32))
            return dq, (dk, dv)

        dq, (dk, dv) = jax.lax.scan(step, jnp.zeros(qb.shape, _F32), kblocks)
        return (dkv[0] + _unblocks(dk), dkv[1] + _unblocks(dv)), dq

    zeros = jnp.zeros(k.shape, _F32)
    (dk, dv), dq = jax.lax.scan(one_query_block, (zeros, zeros), qblocks)
    return _unblocks(dq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _flash(q, k, v, qp, kp, qs, ks, q_chunk, k_chunk):
    return _forward(q, k, v, qp, kp, qs, ks, q_chunk, k_chunk)[0]


def _flash_fwd(q, k, v, qp, kp, qs, ks, q_chunk, k_chunk):
    out, lse = _forward(q, k, v, qp, kp, qs, ks, q_chunk, k_chunk)
    return out, (q, k, v, qp, kp, qs, ks, out, lse)


def _flash_bwd(q_chunk, k_chunk, res, dout):
    q, k, v, qp, kp, qs, ks, out, lse = res
    dq, dk, dv = _backward(q, k, v, qp, kp, qs, ks, out, lse, dout, q_chunk, k_chunk)
    ints = tuple(np.zeros(x.shape, jax.dtypes.float0) for x in (qp, kp, qs, ks))
    return (dq, dk, dv, *ints)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q: Float[Array, "B S N D"], k: Float[Array, "B K G D"], v: Float[Array, "B K G D"],
                    q_pos: Int[Array, "B S"], k_pos: Int[Array, "B K"], q_seg: Int[Array, "B S"] | None,
                    k_seg: Int[Array, "B K"] | None, chunk: int) -> Float[Array, "B S N D"]:
    """Attention of each query to the keys at positions <= its own (and of its segment, when given), in blocks of
    `chunk` queries and `chunk` keys; the same values as `sdpa` with `attention_mask`, up to float32 rounding."""
    b, s, n, d = q.shape
    g = k.shape[2]
    q_chunk, k_chunk = min(chunk, s), min(chunk, k.shape[1])
    sp, kp_len = -(-s // q_chunk) * q_chunk, -(-k.shape[1] // k_chunk) * k_chunk
    if q_seg is None:
        q_seg, k_seg = jnp.zeros((b, s), jnp.int32), jnp.zeros(k_pos.shape, jnp.int32)
    qg = _pad(q.reshape(b, s, g, n // g, d), sp, 0)
    ints = (_pad(q_pos.astype(jnp.int32), sp, -1), _pad(k_pos.astype(jnp.int32), kp_len, _FAR),
            _pad(q_seg.astype(jnp.int32), sp, -1), _pad(k_seg.astype(jnp.int32), kp_len, -2))
    # Tie positions and segment ids to the queries. Otherwise, inside a scan over layers, JAX finds the masks
    # computed from them loop-invariant and hoists all of them out of the loop at once: every (query block,
    # key block) mask, [n, n, B, G, R, chunk, chunk] booleans, 2 GiB for one 16k row of bench-tiny.
    qg, *ints = jax.lax.optimization_barrier((qg, *ints))
    out = _flash(qg, _pad(k, kp_len, 0), _pad(v, kp_len, 0), *ints, q_chunk, k_chunk)
    return out[:, :s].reshape(b, s, n, d)
