"""Per-row sampling for a batch of independent requests (each slot of the JAX engine has its own settings).

The one sampling rule of ringjax: the JAX engine calls it with each slot's settings, the static sampler
(`ringjax.generate.sample_logits`) with one setting broadcast to every row. A row with temperature 0 is greedy and
reports its log-prob under the unscaled logits; otherwise the token is drawn from `logits / temperature`
restricted to the row's top-p nucleus, and the reported log-prob (`logp_infer`) is under `logits / temperature`
WITHOUT the nucleus truncation, which is what the trainer's `token_logprobs(..., temperature)` computes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ringjax.typing import Array, Bool, Float, Int


def nucleus_mask_rows(logp: Float[Array, "B V"], top_p: Float[Array, " B"]) -> Bool[Array, "B V"]:
    """True for each row's smallest set of most likely tokens whose probability reaches its `top_p` (ties kept);
    rows with `top_p >= 1` keep every token."""
    probs = jnp.exp(logp)  # [B V]
    sorted_probs = jnp.sort(probs, axis=-1)[:, ::-1]  # [B V] descending
    before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # [B V] mass strictly above each rank
    kept = jnp.sum(before < top_p[:, None], axis=-1)  # [B] nucleus size (>= 1)
    threshold = jnp.take_along_axis(sorted_probs, kept[:, None] - 1, axis=-1)  # [B 1]
    return (probs >= threshold) | (top_p[:, None] >= 1)


def sample_rows(logits: Float[Array, "B V"], key: jax.Array, temperature: Float[Array, " B"],
                top_p: Float[Array, " B"], use_top_p: bool) -> tuple[Int[Array, " B"], Float[Array, " B"]]:
    """One token per row and its log-prob. `use_top_p` (static) skips the sort when no row truncates."""
    logits = logits.astype(jnp.float32)
    greedy = temperature <= 0  # [B]
    scale = jnp.where(greedy, 1.0, temperature)[:, None]  # [B 1]
    logp = jax.nn.log_softmax(logits / scale, axis=-1)  # [B V]
    choice = jnp.where(nucleus_mask_rows(logp, top_p), logp, -jnp.inf) if use_top_p else logp
    drawn = jax.random.categorical(key, choice, axis=-1)  # [B]
    tokens = jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn).astype(jnp.int32)  # [B]
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
