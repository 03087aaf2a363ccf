"""Grouped (ragged) matmul: rows sorted by expert, each group multiplied by its own expert matrix.

`ragged_dot` is XLA's grouped matmul (a native kernel on GPU and TPU). On CPU XLA lowers it to a
dense product over every group, so `gather` is the CPU path: rows are laid out in tiles of `tile`
rows that never straddle two groups, each tile gathers its expert's matrix and one batched matmul
runs. Work is (rows + experts * (tile - 1)) / tile tiles, proportional to the routed rows only; the
tile size trades weight gathers against padded rows (`tile_size`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ringjax.typing import Array, Float, Int


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


def grouped_matmul(x: Float[Array, "M K"], w: Float[Array, "G K N"], group_sizes: Int[Array, " G"],
                   impl: str) -> Float[Array, "M N"]:
    if impl == "ragged_dot":
        return jax.lax.ragged_dot(x, w, group_sizes)
    if impl == "gather":
        return gather_matmul(x, w, group_sizes)
    raise ValueError(f"grouped matmul impl {impl!r}; expected 'ragged_dot' or 'gather'")


def resolve_impl(impl: str) -> str:
    if impl != "auto":
        return impl
    return "gather" if jax.default_backend() == "cpu" else "ragged_dot"
