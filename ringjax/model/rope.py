"""Rotary position embedding: NeoX (rotate-half) layout over the first `rotary_dim` dims, with YaRN.

Ling 1.0 rotates the whole head; Ling 2.0 rotates `head_dim * partial_rotary_factor` dims and extends
context with YaRN (`rope_scaling`), whose frequency blend and attention factor follow the HF / SGLang
`yarn` implementations (floor/ceil correction range, mscale = 0.1 ln(factor) + 1).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ringjax.model.config import LingConfig, RopeScaling
from ringjax.typing import Array, Float, Int


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _correction_dim(rotations: float, dim: int, base: float, max_pos: int) -> float:
    return dim * math.log(max_pos / (rotations * 2 * math.pi)) / (2 * math.log(base))


def inv_frequencies(rotary_dim: int, theta: float, scaling: RopeScaling | None) -> tuple[np.ndarray, float]:
    """Per-pair inverse frequencies [R/2] (float64 numpy, static) and the cos/sin attention factor."""
    base = theta ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    if scaling is None:
        return base, 1.0
    lo = max(math.floor(_correction_dim(scaling.beta_fast, rotary_dim, theta,
                                        scaling.original_max_position_embeddings)), 0)
    hi = min(math.ceil(_correction_dim(scaling.beta_slow, rotary_dim, theta,
                                       scaling.original_max_position_embeddings)), rotary_dim - 1)
    hi = hi + 0.001 if lo == hi else hi
    ramp = np.clip((np.arange(rotary_dim // 2, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    extrapolate = 1.0 - ramp  # 1: keep the original frequency, 0: interpolate (divide by factor)
    inv = base / scaling.factor * (1.0 - extrapolate) + base * extrapolate
    if scaling.mscale_all_dim:
        attn = _yarn_mscale(scaling.factor, scaling.mscale) / _yarn_mscale(scaling.factor, scaling.mscale_all_dim)
    else:
        attn = _yarn_mscale(scaling.factor)
    return inv, attn


def rope_tables(positions: Int[Array, "B S"],
                cfg: LingConfig) -> tuple[Float[Array, "B S R2"], Float[Array, "B S R2"]]:
    """cos and sin tables (float32) for the given absolute positions."""
    inv, attn = inv_frequencies(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv, jnp.float32)  # [B S R/2]
    return jnp.cos(angles) * attn, jnp.sin(angles) * attn


def apply_rope(x: Float[Array, "B S N D"], cos: Float[Array, "B S R2"],
               sin: Float[Array, "B S R2"]) -> Float[Array, "B S N D"]:
    """Rotates the first 2*R2 dims of every head (rotate-half pairing i <-> i + R2)."""
    half = cos.shape[-1]
    x32 = x.astype(jnp.float32)
    x1, x2, rest = x32[..., :half], x32[..., half:2 * half], x32[..., 2 * half:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # [B S 1 R/2]
    out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, rest], axis=-1)
    return out.astype(x.dtype)
