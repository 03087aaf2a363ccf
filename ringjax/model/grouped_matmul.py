"""Grouped (ragged) matmul: rows sorted by expert, each group multiplied by its own expert matrix.

`ragged_dot` is XLA's grouped matmul, a native kernel on TPU. On CPU, and on GPU in jax 0.11 (measured on an
H200), XLA lowers it to a dense product over every group: a 4-layer Ling-mini-2.0 train step of 65,536 tokens
asks for 128 GiB, and a prefill of 256 x 128 tokens for 256 GiB. So the CPU and GPU paths are our own, both
proportional to the routed rows (on the H200: the train step above in 3.1 s with `segment`; decode of 256 rows at
22,000 tokens/s with `gather` against 5,700 with `segment`):
- `segment` (many rows per expert): the sorted rows are cut at every tile boundary (`tile` rows) and every
  group boundary; a scan visits each piece (one tile, one group: at most rows / tile + groups visits)
  and multiplies its tile by its group's matrix read in place, masked to the piece's rows. Nothing is
  copied per tile; the backward pass (custom VJP) is the same scan with the transposed matrices for
  the rows and a per-group accumulation of x^T dy for the weights (megablox's gmm / tgmm split).
- `gather` (few rows per expert: decode): rows laid out in tiles that never straddle two groups,
  each tile gathers its expert's matrix and one batched matmul runs: one fused op, no loop, but the
  weight gather is an element-wise copy on XLA:CPU that dominates once tiles are many (3-5x slower
  than `segment` at 2048 rows).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ringjax.typing import Array, Float, Int


SEGMENT_MIN_ROWS = 32  # average routed rows per expert from which `auto` takes `segment` on CPU (measured)


def num_tiles(rows: int, groups: int, tile: int) -> int:
    """Tiles of `tile` rows needed for `rows` rows in `groups` groups when no tile straddles two groups."""
    return rows if tile == 1 else (rows + groups * (tile - 1) + tile - 1) // tile


def tile_size(rows: int, groups: int, copy_cost: int = 16) -> int:
    """The power of two in [1, 128] with the least modelled cost `tiles * (copy_cost + tile)`.

    Each tile gathers one expert matrix (cost ~ `copy_cost` rows of matmul) and multiplies `tile` rows,
    padding included. Few rows per expert (decode) -> small tiles but not one gather per row; many
    rows (prefill, training) -> large tiles, where the gathers are negligible next to the matmul.
    """
    sizes = [2**i for i in range(8)]
    return min(sizes, key=lambda b: (num_tiles(rows, groups, b) * (copy_cost + b), b))


def group_of_rows(group_sizes: Int[Array, " G"], rows: int) -> Int[Array, " M"]:
    """Group id of each sorted row; rows past sum(group_sizes) get id G."""
    ends = jnp.cumsum(group_sizes)
    return jnp.searchsorted(ends, jnp.arange(rows), side="right").astype(jnp.int32)


def gather_matmul(x: Float[Array, "M K"], w: Float[Array, "G K N"],
                  group_sizes: Int[Array, " G"]) -> Float[Array, "M N"]:
    m, k = x.shape
    g, _, n = w.shape
    b = tile_size(m, g)
    row_group = group_of_rows(group_sizes, m)  # [M]; == G for unrouted tail rows
    valid = row_group < g
    row_group = jnp.minimum(row_group, g - 1)
    if b == 1:
        out = jnp.einsum("mk,mkn->mn", x, w[row_group])
        return jnp.where(valid[:, None], out, 0)
    padded = (group_sizes + b - 1) // b * b  # [G]
    padded_start = jnp.cumsum(padded) - padded
    start = jnp.cumsum(group_sizes) - group_sizes
    dest = padded_start[row_group] + jnp.arange(m) - start[row_group]  # [M] row slot in the tiled buffer
    dest = jnp.where(valid, dest, m + g * (b - 1) + b)  # unrouted rows: out of range, dropped
    n_tiles = num_tiles(m, g, b)
    buf = jnp.zeros((n_tiles * b, k), x.dtype).at[dest].set(x, mode="drop")
    tile_group = jnp.searchsorted(jnp.cumsum(padded), jnp.arange(n_tiles) * b, side="right")
    tile_w = w[jnp.minimum(tile_group, g - 1)]  # [tiles K N]
    out = jnp.einsum("tbk,tkn->tbn", buf.reshape(n_tiles, b, k), tile_w).reshape(n_tiles * b, n)
    return jnp.where(valid[:, None], out[jnp.minimum(dest, n_tiles * b - 1)], 0)


def segment_tile(rows: int, groups: int, read_cost: int = 48) -> int:
    """The power of two in [8, 128] with the least modelled cost `visits * (read_cost + tile)`: each visit reads
    one expert matrix (~`read_cost` rows of matmul) and multiplies `tile` rows."""
    sizes = [2**i for i in range(3, 8)]
    return min(sizes, key=lambda b: ((-(-rows // b) + groups) * (read_cost + b), b))


def _visits(group_sizes: Int[Array, " G"], rows: int, tile: int) -> tuple[Int[Array, " V"], ...]:
    """(lo, hi, tile index, group) of every piece of [0, rows) lying in one tile and one group; rows past
    sum(group_sizes) belong to no piece. Empty pieces (empty groups) have hi == lo."""
    g = group_sizes.shape[0]
    n_tiles = -(-rows // tile)
    ends = jnp.cumsum(group_sizes).astype(jnp.int32)
    starts = jnp.sort(jnp.concatenate([jnp.arange(n_tiles, dtype=jnp.int32) * tile, ends]))  # [V]
    lo = jnp.minimum(starts, ends[-1])
    hi = jnp.minimum(jnp.concatenate([starts[1:], jnp.array([rows], jnp.int32)]), ends[-1])
    group = jnp.minimum(jnp.searchsorted(ends, lo, side="right"), g - 1).astype(jnp.int32)
    return lo, jnp.maximum(hi, lo), jnp.minimum(lo // tile, n_tiles - 1), group


def _piece(lo, hi, index, tile: int) -> jax.Array:
    rows = index * tile + jnp.arange(tile)
    return ((rows >= lo) & (rows < hi))[:, None]


def _segment_rows(x: Float[Array, "M K"], w: Float[Array, "G K N"], group_sizes: Int[Array, " G"],
                  tile: int) -> Float[Array, "M N"]:
    """Row block of group g times w[g] (the forward pass, and the backward pass for x with w transposed)."""
    m, n = x.shape[0], w.shape[2]
    padded = -(-m // tile) * tile
    xp = jnp.pad(x, ((0, padded - m), (0, 0)))

    def visit(out, piece):
        lo, hi, index, group = piece
        y = jnp.where(_piece(lo, hi, index, tile), jax.lax.dynamic_slice_in_dim(xp, index * tile, tile) @ w[group], 0)
        start = index * tile
        return jax.lax.dynamic_update_slice_in_dim(
            out, jax.lax.dynamic_slice_in_dim(out, start, tile) + y.astype(out.dtype), start, 0), None

    out, _ = jax.lax.scan(visit, jnp.zeros((padded, n), x.dtype), _visits(group_sizes, m, tile))
    return out[:m]


def _segment_weights(x: Float[Array, "M K"], dy: Float[Array, "M N"], group_sizes: Int[Array, " G"],
                     tile: int) -> Float[Array, "G K N"]:
    """dw[g] = x_g^T dy_g over each group's rows, accumulated in float32."""
    m, k, n = x.shape[0], x.shape[1], dy.shape[1]
    padded = -(-m // tile) * tile
    xp, dyp = (jnp.pad(a, ((0, padded - m), (0, 0))) for a in (x, dy))

    def visit(dw, piece):
        lo, hi, index, group = piece
        xt = jnp.where(_piece(lo, hi, index, tile), jax.lax.dynamic_slice_in_dim(xp, index * tile, tile), 0)
        part = jnp.matmul(xt.T, jax.lax.dynamic_slice_in_dim(dyp, index * tile, tile),
                          preferred_element_type=jnp.float32)
        return jax.lax.dynamic_update_index_in_dim(dw, dw[group] + part, group, 0), None

    dw, _ = jax.lax.scan(visit, jnp.zeros((group_sizes.shape[0], k, n), jnp.float32), _visits(group_sizes, m, tile))
    return dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _segment(x, w, group_sizes, tile):
    return _segment_rows(x, w, group_sizes, tile)


def _segment_fwd(x, w, group_sizes, tile):
    return _segment_rows(x, w, group_sizes, tile), (x, w, group_sizes)


def _segment_bwd(tile, res, dy):
    x, w, group_sizes = res
    dx = _segment_rows(dy, jnp.swapaxes(w, 1, 2), group_sizes, tile)
    return dx, _segment_weights(x, dy, group_sizes, tile).astype(w.dtype), None


_segment.defvjp(_segment_fwd, _segment_bwd)


def segment_matmul(x: Float[Array, "M K"], w: Float[Array, "G K N"],
                   group_sizes: Int[Array, " G"]) -> Float[Array, "M N"]:
    return _segment(x, w, group_sizes.astype(jnp.int32), segment_tile(x.shape[0], w.shape[0]))


def grouped_matmul(x: Float[Array, "M K"], w: Float[Array, "G K N"], group_sizes: Int[Array, " G"],
                   impl: str) -> Float[Array, "M N"]:
    if impl == "ragged_dot":
        return jax.lax.ragged_dot(x, w, group_sizes)
    if impl == "segment":
        return segment_matmul(x, w, group_sizes)
    if impl == "gather":
        return gather_matmul(x, w, group_sizes)
    raise ValueError(f"grouped matmul impl {impl!r}; expected 'ragged_dot', 'segment' or 'gather'")


def resolve_impl(impl: str, rows: int, groups: int) -> str:
    """`auto`: ragged_dot on TPU; on CPU and GPU `segment` from SEGMENT_MIN_ROWS routed rows per expert on average
    (training, prefill), else `gather` (decode: each scan step of `segment` costs ~60 us of loop overhead on XLA:CPU,
    more than the few rows it multiplies; on an H200, decode is 4x faster with `gather`)."""
    if impl != "auto":
        return impl
    if jax.default_backend() == "tpu":
        return "ragged_dot"
    return "segment" if rows >= SEGMENT_MIN_ROWS * groups else "gather"
