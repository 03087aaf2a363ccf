"""Token log-probabilities without materialising [B, S, V] float32 logits.

The sequence is cut into chunks of `chunk` tokens; each chunk's logits are made, reduced to the
target log-prob (and entropy) and dropped. The chunk body is rematerialised, so the backward pass
recomputes one chunk's logits at a time as well: peak logits memory is B * chunk * V floats.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ringjax.typing import Array, Float, Int


def token_logprobs(hidden: Float[Array, "B S H"], head: Float[Array, "V H"], targets: Int[Array, "B S"],
                   chunk: int, temperature: float = 1.0) -> tuple[Float[Array, "B S"], Float[Array, "B S"]]:
    """log p(targets[b, s] | hidden[b, s]) and the entropy of that distribution, both float32."""
    b, s, h = hidden.shape
    chunk = min(chunk, s)
    n = -(-s // chunk)
    pad = n * chunk - s
    hid = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, h).swapaxes(0, 1)  # [n B C H]
    tgt = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)  # [n B C]

    @jax.checkpoint
    def one(h_c, t_c):
        logits = jnp.einsum("bch,vh->bcv", h_c, head.astype(h_c.dtype), preferred_element_type=jnp.float32)
        logits = logits / temperature  # [B C V]
        lse = jax.nn.logsumexp(logits, axis=-1)  # [B C]
        logp = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0] - lse
        entropy = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
        return logp, entropy

    logp, entropy = jax.lax.map(lambda a: one(*a), (hid, tgt))  # [n B C]
    logp = logp.swapaxes(0, 1).reshape(b, n * chunk)[:, :s]
    entropy = entropy.swapaxes(0, 1).reshape(b, n * chunk)[:, :s]
    return logp, entropy
