"""Token log-probabilities without materialising [B, S, V] float32 logits.

The sequence is cut into chunks of `chunk` tokens; each chunk's logits are made, reduced to the
target log-prob (and entropy) and dropped. The chunk body is rematerialised, so the backward pass
recomputes one chunk's logits at a time as well.

With `vocab_chunk` set and V larger than it, a chunk's logits are not made whole either: the vocabulary
is cut into nv blocks of Vc <= vocab_chunk entries (`vocab_blocks`) and a scan over the blocks keeps an
online logsumexp per token: a running max m (a stabiliser only, so it carries no gradient), s = sum
exp(z - m), t = sum exp(z - m) * z and the target's logit. Then lse = m + log s (exact, its gradient is
the softmax), log p = z[target] - lse and entropy = lse - t / s. The scan body is rematerialised too, so
the backward pass keeps only the [B, chunk] carries per block. Peak logits memory is
B * chunk * min(V, Vc) floats, whatever the vocabulary size.

The blocks are strided, not contiguous: with the head viewed as [Vc, nv, H] (row r = a * nv + j), block
j is head[:, j] and holds the columns a * nv + j. A head sharded over its vocabulary axis keeps that
sharding on the a axis, so every block stays sharded the same way and no block lives on one device
(contiguous blocks would each sit on one or two shards and need gathering or leave devices idle).
When no divisor of V gives blocks of about vocab_chunk entries, the head is padded with zero rows to
nv * Vc and the padded columns are masked out (they add nothing to s, t or the target's logit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from ringjax.sharding import current_mesh, tokens_split
from ringjax.typing import Array, Float, Int


def vocab_blocks(vocab: int, vocab_chunk: int | None) -> tuple[int, int, int]:
    """(nv blocks, Vc entries per block, padded vocabulary nv * Vc) of the vocabulary-chunked log-prob pass.

    One block of the whole vocabulary when `vocab_chunk` is None or not below `vocab`. Otherwise nv is the
    smallest divisor of `vocab` from n = ceil(vocab / vocab_chunk) to 2n (no padding); failing one, nv = n and
    the vocabulary is padded to n * ceil(vocab / n). Vc <= vocab_chunk either way."""
    if vocab_chunk is None or vocab <= vocab_chunk:
        return 1, vocab, vocab
    need = -(-vocab // vocab_chunk)
    for nv in range(need, 2 * need + 1):
        if vocab % nv == 0:
            return nv, vocab // nv, vocab
    width = -(-vocab // need)
    return need, width, need * width


def token_logprobs(hidden: Float[Array, "B S H"], head: Float[Array, "V H"], targets: Int[Array, "B S"],
                   chunk: int, temperature: float = 1.0, vocab_chunk: int | None = None
                   ) -> tuple[Float[Array, "B S"], Float[Array, "B S"]]:
    """log p(targets[b, s] | hidden[b, s]) and the entropy of that distribution, both float32. `vocab_chunk`:
    vocabulary entries per block of the online logsumexp (None: the whole vocabulary at once)."""
    b, s, h = hidden.shape
    chunk = min(chunk, s)
    n = -(-s // chunk)
    pad = n * chunk - s
    hid = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, h).swapaxes(0, 1)  # [n B C H]
    tgt = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)  # [n B C]
    vocab = head.shape[0]
    nv, width, padded = vocab_blocks(vocab, vocab_chunk)

    if nv == 1:
        @jax.checkpoint
        def one(h_c, t_c):
            logits = jnp.einsum("bch,vh->bcv", h_c, head.astype(h_c.dtype), preferred_element_type=jnp.float32)
            logits = logits / temperature  # [B C V]
            lse = jax.nn.logsumexp(logits, axis=-1)  # [B C]
            logp = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0] - lse
            entropy = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
            return logp, entropy
    else:
        # Strided blocks: [Vp H] viewed as [Vc nv H], block j = blocks[:, j] holds the columns a * nv + j. Reading
        # it by index (not scanning over a transposed [nv Vc H] copy) keeps the head from being copied, and the
        # backward pass adds each block's gradient into one head-sized buffer.
        blocks = jnp.pad(head, ((0, padded - vocab), (0, 0))).reshape(width, nv, h)
        columns = jnp.arange(width, dtype=jnp.int32) * nv  # [Vc] + j: block j's vocabulary ids

        @jax.checkpoint
        def one(h_c, t_c):
            @jax.checkpoint
            def block(carry, j):
                m, s_, t_, target = carry  # [B C] each
                w = jax.lax.dynamic_index_in_dim(blocks, j, axis=1, keepdims=False)  # [Vc H]
                z = jnp.einsum("bch,vh->bcv", h_c, w.astype(h_c.dtype), preferred_element_type=jnp.float32)
                z = z / temperature  # [B C Vc]
                col = columns + j
                if padded > vocab:
                    valid = col < vocab
                    top = jnp.max(jnp.where(valid, z, -jnp.inf), axis=-1)
                else:
                    top = jnp.max(z, axis=-1)
                m_new = jax.lax.stop_gradient(jnp.maximum(m, top))
                scale = jnp.exp(m - m_new)
                p = jnp.exp(z - m_new[..., None])
                if padded > vocab:
                    p = jnp.where(valid, p, 0.0)
                s_ = s_ * scale + jnp.sum(p, axis=-1)
                t_ = t_ * scale + jnp.sum(p * z, axis=-1)
                target = target + jnp.sum(jnp.where(col == t_c[..., None], z, 0.0), axis=-1)
                return (m_new, s_, t_, target), None

            zeros = jnp.zeros(t_c.shape, jnp.float32)
            init = (jnp.full(t_c.shape, -jnp.inf, jnp.float32), zeros, zeros, zeros)
            (m, s_, t_, target), _ = jax.lax.scan(block, init, jnp.arange(nv, dtype=jnp.int32))
            lse = m + jnp.log(s_)
            return target - lse, lse - t_ / s_

    logp, entropy = jax.lax.map(lambda a: one(*a), (hid, tgt))  # [n B C]
    logp = logp.swapaxes(0, 1).reshape(b, n * chunk)[:, :s]
    entropy = entropy.swapaxes(0, 1).reshape(b, n * chunk)[:, :s]
    return logp, entropy


def next_token_logprobs(hidden: Float[Array, "B S H"], head: Float[Array, "V H"], tokens: Int[Array, "B S"],
                        chunk: int, temperature: float = 1.0, vocab_chunk: int | None = None
                        ) -> tuple[Float[Array, "B S-1"], Float[Array, "B S-1"]]:
    """`token_logprobs` of tokens[:, 1:] given hidden[:, :-1]: what a language model predicts at each step.

    With a row's tokens split over the mesh's context axis, the pass runs on all S positions (the last one's
    target is a placeholder, dropped) so that no slice moves hidden states between devices, and each device
    chunks its own share of the row (a shard_map manual over `context` only: the batch, vocabulary and embedding
    splits stay with the compiler)."""
    mesh = current_mesh()
    if not tokens_split(mesh):
        return token_logprobs(hidden[:, :-1], head, tokens[:, 1:], chunk, temperature, vocab_chunk)
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    rows = PartitionSpec(None, "context")

    def local(h, t, w):
        return token_logprobs(h, w, t, chunk, temperature, vocab_chunk)

    logp, entropy = jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, PartitionSpec()), out_specs=(rows, rows),
                                  axis_names={"context"}, check_vma=False)(hidden, targets, head)
    return logp[:, :-1], entropy[:, :-1]
