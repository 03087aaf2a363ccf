"""Elementwise building blocks shared by the Ling layers (pure functions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ringjax.typing import Array, Float


def rms_norm(x: Float[Array, "... H"], weight: Float[Array, " H"], eps: float) -> Float[Array, "... H"]:
    """`x * rsqrt(mean(x^2) + eps) * w` in float32 (no 1+w offset, as in every Ling checkpoint)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * weight.astype(jnp.float32)).astype(x.dtype)


def swiglu(x: Float[Array, "... H"], w_gate: Float[Array, "H F"], w_up: Float[Array, "H F"],
           w_down: Float[Array, "F H"]) -> Float[Array, "... H"]:
    """`down(silu(gate(x)) * up(x))`, the MLP of dense layers and shared experts."""
    dt = x.dtype
    gate = x @ w_gate.astype(dt)  # [... F]
    up = x @ w_up.astype(dt)  # [... F]
    return (jax.nn.silu(gate) * up) @ w_down.astype(dt)  # [... H]
