"""`token_logprobs` with the vocabulary cut into blocks (an online logsumexp over strided blocks of the head):
the block layout, values and gradients against the one-block pass and a float64 reference, the head sharded
over its vocabulary axis, and compiled temporary memory that stops growing with V beyond the head's gradient."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import ringjax
import ringjax.model.model as model_module
import ringjax.trainer.step as step_module
from ringjax.model.logprobs import next_token_logprobs, token_logprobs, vocab_blocks

TOL = 1e-5  # float32, matmul precision "highest" (conftest)

lp_fn = jax.jit(token_logprobs, static_argnums=(3, 4, 5))


def _inputs(b, s, h, v, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, s, h)).astype(dtype)
    head = rng.normal(size=(v, h)).astype(dtype)
    targets = rng.integers(0, v, size=(b, s)).astype(np.int32)
    return hidden, head, targets


def _reference(hidden, head, targets, temperature):
    """float64 log p(target) and entropy, from the whole [B S V] logits."""
    z = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64).T / temperature
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp, targets[..., None], -1)[..., 0], -(np.exp(logp) * logp).sum(-1)


def _loss(vocab_chunk, chunk, temperature):
    def loss(hidden, head, targets):
        logp, entropy = token_logprobs(hidden, head, targets, chunk, temperature, vocab_chunk)
        return jnp.sum(logp) + 0.3 * jnp.sum(entropy)
    return loss


def _close(a, b, tol=TOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=tol, rtol=tol)


# block layout

def test_vocab_blocks_of_real_vocabularies_need_no_padding():
    assert vocab_blocks(157184, 32768) == (8, 19648, 157184)  # 2^9 * 307
    assert vocab_blocks(151936, 32768) == (8, 18992, 151936)
    assert vocab_blocks(128256, 32768) == (4, 32064, 128256)
    assert vocab_blocks(126464, 32768) == (4, 31616, 126464)


def test_vocab_blocks_rules():
    assert vocab_blocks(1000, None) == vocab_blocks(1000, 1000) == vocab_blocks(1000, 4096) == (1, 1000, 1000)
    assert vocab_blocks(1009, 100) == (11, 92, 1012)  # a prime: no divisor in [11, 22], padded by 3 rows
    for v in range(2, 400):
        for vc in (1, 2, 3, 7, 16, 50, 128):
            nv, width, padded = vocab_blocks(v, vc)
            if v <= vc:
                assert (nv, width, padded) == (1, v, v)
                continue
            need = -(-v // vc)
            assert width <= vc and nv * width == padded and 0 <= padded - v < nv
            divisors = [d for d in range(need, 2 * need + 1) if v % d == 0]
            if divisors:
                assert (nv, padded) == (divisors[0], v)
            else:
                assert (nv, width) == (need, -(-v // need))


# values

@pytest.mark.parametrize("v, vocab_chunk, chunk, temperature", [
    (96, 16, 4, 1.0),  # divisor path: 6 blocks of 16
    (100, 16, 3, 0.7),  # divisor path: 10 blocks of 10 (7 .. 9 do not divide 100); last token chunk padded
    (101, 16, 5, 1.3),  # prime: 7 blocks of 15, padded to 105
    (97, 10, 9, 1.0),  # prime: 10 blocks of 10, padded to 100; one token chunk
    (210, 1, 4, 1.0),  # one column per block
])
def test_vocab_chunked_matches_unchunked_and_float64(v, vocab_chunk, chunk, temperature):
    hidden, head, targets = _inputs(2, 9, 8, v, seed=v)
    logp, entropy = lp_fn(hidden, head, targets, chunk, temperature, vocab_chunk)
    want_logp, want_entropy = lp_fn(hidden, head, targets, chunk, temperature, None)
    assert logp.dtype == entropy.dtype == jnp.float32 and logp.shape == entropy.shape == (2, 9)
    _close(logp, want_logp)
    _close(entropy, want_entropy)
    ref_logp, ref_entropy = _reference(hidden, head, targets, temperature)
    _close(logp, ref_logp)
    _close(entropy, ref_entropy)


@pytest.mark.parametrize("vocab_chunk", [64, 65, 10**6])
def test_one_block_is_bitwise_the_unchunked_pass(vocab_chunk):
    hidden, head, targets = _inputs(2, 7, 8, 64, seed=1)
    got = lp_fn(hidden, head, targets, 3, 0.8, vocab_chunk)
    want = lp_fn(hidden, head, targets, 3, 0.8, None)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_inputs():
    """bfloat16 hidden states and head: the same float32-accumulated logits, only cut into blocks."""
    hidden, head, targets = _inputs(2, 8, 16, 120, seed=2)
    hidden, head = jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(head, jnp.bfloat16)
    got = lp_fn(hidden, head, targets, 4, 1.0, 32)
    want = lp_fn(hidden, head, targets, 4, 1.0, None)
    for a, b in zip(got, want):
        _close(a, b)


def test_model_and_trainer_pass_the_configs_vocab_chunk(monkeypatch):
    """`Ling.token_logprobs` and the train step's forward call `next_token_logprobs` with
    `compute.logprob_vocab_chunk` (traced on abstract shapes only)."""
    seen = []

    def spy(*args):
        seen.append(args[3:])
        return next_token_logprobs(*args)

    monkeypatch.setattr(model_module, "next_token_logprobs", spy)
    monkeypatch.setattr(step_module, "next_token_logprobs", spy)
    cfg = ringjax.preset("tiny-v2", compute={"logprob_chunk": 5, "logprob_vocab_chunk": 100})
    graphdef, state = nnx.split(ringjax.abstract_model(cfg))
    tokens = jax.ShapeDtypeStruct((2, 12), jnp.int32)
    jax.eval_shape(lambda s, t: nnx.merge(graphdef, s).token_logprobs(t, temperature=0.9), state, tokens)
    mb = {"tokens": tokens, "positions": tokens, "segment_ids": tokens}
    jax.eval_shape(lambda s, b: step_module.sequence_logprobs(nnx.merge(graphdef, s), b, 0.7), state, mb)
    assert seen == [(5, 0.9, 100), (5, 0.7, 100)]


# gradients

def _reference_grads(hidden, head, targets, temperature, weight=0.3):
    """float64 d/d(hidden, head) of sum(log p) + weight * sum(entropy): per logit onehot - p - weight p (z - E z)."""
    h, w = np.asarray(hidden, np.float64), np.asarray(head, np.float64)
    z = h @ w.T / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = np.eye(w.shape[0])[targets] - p - weight * p * (z - (p * z).sum(-1, keepdims=True))
    g /= temperature
    return g @ w, np.einsum("bsv,bsh->vh", g, h)


@pytest.mark.parametrize("v, vocab_chunk, chunk, temperature", [
    (96, 16, 4, 1.0),  # divisor path
    (101, 16, 3, 0.7),  # padding path
])
def test_vocab_chunked_gradients(v, vocab_chunk, chunk, temperature):
    hidden, head, targets = _inputs(2, 9, 8, v, seed=v + 1)
    grad = jax.jit(jax.grad(_loss(vocab_chunk, chunk, temperature), argnums=(0, 1)))
    want_grad = jax.jit(jax.grad(_loss(None, chunk, temperature), argnums=(0, 1)))
    got, want = grad(hidden, head, targets), want_grad(hidden, head, targets)
    ref = _reference_grads(hidden, head, targets, temperature)
    for g, w, r in zip(got, want, ref):
        assert g.shape == w.shape and g.dtype == jnp.float32
        scale = float(np.abs(r).max())
        assert float(jnp.abs(g - w).max()) <= TOL * scale
        assert float(np.abs(np.asarray(g, np.float64) - r).max()) <= TOL * scale


# sharding

def test_head_sharded_over_vocabulary_stays_sharded():
    """Strided blocks keep a vocabulary-sharded head sharded: no collective moves head rows (an all-gather,
    all-to-all or permute), the head's gradient comes out sharded like the head, and the values match."""
    mesh = jax.make_mesh((4,), ("tensor",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
    hidden, head, targets = _inputs(2, 16, 8, 1024, seed=5)
    shardings = (NamedSharding(mesh, P()), NamedSharding(mesh, P("tensor", None)), NamedSharding(mesh, P()))
    grad = jax.jit(jax.grad(_loss(128, 8, 1.0), argnums=(0, 1)))
    compiled = grad.lower(*(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                            for x, s in zip((hidden, head, targets), shardings))).compile()
    assert not re.search(r"all-gather|all-to-all|collective-permute", compiled.as_text())
    assert compiled.output_shardings[1].is_equivalent_to(shardings[1], 2)
    got = compiled(*(jax.device_put(x, s) for x, s in zip((hidden, head, targets), shardings)))
    want = jax.jit(jax.grad(_loss(None, 8, 1.0), argnums=(0, 1)))(hidden, head, targets)
    for g, w in zip(got, want):
        assert float(jnp.abs(g - w).max()) <= TOL * float(jnp.abs(w).max())


# memory

def _temp_bytes(b, s, h, v, chunk, vocab_chunk):
    shapes = (jax.ShapeDtypeStruct((b, s, h), jnp.float32), jax.ShapeDtypeStruct((v, h), jnp.float32),
              jax.ShapeDtypeStruct((b, s), jnp.int32))
    compiled = jax.jit(jax.grad(_loss(vocab_chunk, chunk, 1.0), argnums=(0, 1))).lower(*shapes).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_temp_memory_stops_growing_with_the_vocabulary():
    """From V = 2 to 8 blocks the vocab-chunked pass grows by under two head gradients (an output, inherently O(V));
    the unchunked pass grows by at least one chunk's [B, chunk, V] float32 logits."""
    b, s, h, chunk, vc = 2, 128, 16, 64, 512
    small, big = 2 * vc, 8 * vc
    chunked = _temp_bytes(b, s, h, big, chunk, vc) - _temp_bytes(b, s, h, small, chunk, vc)
    whole = _temp_bytes(b, s, h, big, chunk, None) - _temp_bytes(b, s, h, small, chunk, None)
    assert whole >= b * chunk * (big - small) * 4
    assert chunked <= 2 * big * h * 4
    assert chunked * 10 < whole
