"""KV cache for prefill + one-token decoding: per stack, keys and values [L, B, K, G, D]."""

from __future__ import annotations

import jax.numpy as jnp

from ringjax.model.config import LingConfig
from ringjax.sharding import constrain

CACHE_AXES = ("layers", "batch", "cache_seq", "act_kv_heads", "head_dim")


def init_cache(cfg: LingConfig, batch: int, max_len: int, dtype: str | None = None) -> dict[str, dict | None]:
    """Zeroed cache for `batch` rows of up to `max_len` positions (the compute dtype by default)."""
    if max_len > cfg.max_position_embeddings:
        raise ValueError(f"cache length {max_len} exceeds max_position_embeddings={cfg.max_position_embeddings}")
    dt = jnp.dtype(dtype or cfg.compute.dtype)

    def stack(n):
        if not n:
            return None
        shape = (n, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
        return {"k": constrain(jnp.zeros(shape, dt), CACHE_AXES), "v": constrain(jnp.zeros(shape, dt), CACHE_AXES)}

    return {"dense": stack(cfg.num_dense_layers), "moe": stack(cfg.num_moe_layers)}
