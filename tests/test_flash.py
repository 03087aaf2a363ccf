"""`compute.attention: flash` (ringjax/model/flash.py): key blocks with an online softmax and a backward pass of its
own. Values and gradients equal the reference einsum attention on packed rows (segments, a padded last block,
grouped-query heads, queries against a longer cache); the model, its log-probs and a context-parallel layout give
the same results as `xla`; the compiled memory of a long row holds no block spanning the row.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ringjax
from ringjax.model.attention import attention_mask, blocked_sdpa, sdpa
from ringjax.model.flash import flash_attention
from ringjax.sharding import make_mesh, state_shardings
from numerics import EPS32, forward_chain, logprob_tol, logit_scale

B, S, N, G, D = 2, 45, 4, 2, 16


def _rows(seed=0):
    rng = np.random.default_rng(seed)
    q, k, v, w = (jnp.asarray(rng.normal(size=(B, S, h, D)), jnp.float32) for h in (N, G, G, N))
    # two packed sequences per row (20 + 25 tokens), then the second row's last 5 tokens are padding (segment 0)
    pos = np.tile(np.concatenate([np.arange(20), np.arange(25)]), (B, 1))
    seg = np.tile(np.concatenate([np.ones(20), 2 * np.ones(25)]).astype(np.int32), (B, 1))
    seg[1, -5:], pos[1, -5:] = 0, 0
    return q, k, v, w, jnp.asarray(pos), jnp.asarray(seg)


def _tol(x, terms):
    """float32 sums of `terms` terms of |x|-sized values in two orders (tests/numerics.py)."""
    return terms * EPS32 * float(jnp.max(jnp.abs(x)))


@pytest.mark.parametrize("chunk", [8, 16, 64])
def test_values_and_gradients_equal_the_reference(chunk):
    q, k, v, w, pos, seg = _rows()

    def reference(q, k, v):
        return sdpa(q, k, v, attention_mask(pos, pos, seg, seg), "reference")

    def flash(q, k, v):
        return flash_attention(q, k, v, pos, pos, seg, seg, chunk)

    want, got = reference(q, k, v), flash(q, k, v)
    np.testing.assert_allclose(got, want, atol=_tol(want, 4 * S), rtol=0)
    grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * w), argnums=(0, 1, 2))(q, k, v) for f in (reference, flash)]
    for name, a, b in zip("qkv", *grads):
        np.testing.assert_allclose(b, a, atol=_tol(a, 8 * S), rtol=0, err_msg=name)
        assert float(jnp.max(jnp.abs(a))) > 1e-3, name


def test_queries_against_a_longer_cache_and_a_query_that_sees_nothing():
    """The engine's layout: new queries at their positions against a cache of 50 positions; a query at position -1
    (sees no key) gets zeros, not NaN."""
    q, _, _, _, _, _ = _rows(1)
    rng = np.random.default_rng(2)
    k, v = (jnp.asarray(rng.normal(size=(B, 50, G, D)), jnp.float32) for _ in range(2))
    kp = jnp.broadcast_to(jnp.arange(50), (B, 50))
    qp = jnp.asarray(rng.integers(0, 50, size=(B, S))).at[0, 3].set(-1)
    got = flash_attention(q, k, v, qp, kp, None, None, 16)
    want = sdpa(q, k, v, attention_mask(qp, kp, None, None) | (qp < 0)[:, :, None], "reference")
    keep = np.asarray(qp >= 0)
    np.testing.assert_allclose(np.asarray(got)[keep], np.asarray(want)[keep], atol=_tol(want, 200), rtol=0)
    assert np.all(np.asarray(got)[0, 3] == 0)


def test_bfloat16_inputs_keep_their_dtype():
    q, k, v, _, pos, seg = _rows(3)
    got = flash_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), pos, pos, seg, seg,
                          16)
    want = sdpa(q, k, v, attention_mask(pos, pos, seg, seg), "reference")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.05, rtol=0)  # bf16 inputs: ~3 digits


def _model_logprobs(cfg, state, graphdef, tokens):
    return jax.jit(lambda s, t: nnx.merge(graphdef, s).token_logprobs(t))(state, tokens)


@pytest.mark.parametrize("mesh", [None, dict(fsdp=2, context=4)])
def test_the_model_gives_the_same_log_probs_and_gradients_as_xla(mesh):
    """tiny-v2 over 96-token rows in blocks of 16: log-probs and the log-prob gradient as with `xla`, unsharded and
    with each row split over 4 context devices."""
    xla = ringjax.preset("tiny-v2", compute=dict(attention_chunk=16))
    flash = xla.replace(**{"compute.attention": "flash"})
    graphdef, state = nnx.split(ringjax.create_model(xla, seed=0))
    tokens = jax.random.randint(jax.random.key(0), (4, 96), 0, xla.vocab_size)
    model = nnx.merge(graphdef, state)
    tol = logprob_tol(xla, 96, logit_scale(model.head_weight(), model.final_norm[...]))
    want = _model_logprobs(xla, state, graphdef, tokens)

    def loss(cfg):
        g = nnx.split(ringjax.abstract_model(cfg))[0]
        return jax.jit(jax.grad(lambda s, t: -jnp.mean(nnx.merge(g, s).token_logprobs(t)[0])))

    want_grads = loss(xla)(state, tokens)
    flash_graphdef = nnx.split(ringjax.abstract_model(flash))[0]
    if mesh is not None:
        m = make_mesh(**mesh)
        state = jax.device_put(state, state_shardings(state, m))
        with jax.set_mesh(m):
            got, grads = _model_logprobs(flash, state, flash_graphdef, tokens), loss(flash)(state, tokens)
    else:
        got, grads = _model_logprobs(flash, state, flash_graphdef, tokens), loss(flash)(state, tokens)
    np.testing.assert_allclose(got[0], want[0], atol=tol, rtol=0)
    rel = 2 * forward_chain(xla, 96) * EPS32
    for (path, a), (_, b) in zip(nnx.to_flat_state(want_grads), nnx.to_flat_state(grads)):
        tol = rel * float(jnp.max(jnp.abs(a[...])))
        np.testing.assert_allclose(b[...], a[...], atol=tol, rtol=0, err_msg=str(path))


def test_no_block_spans_the_row():
    """Compiled temp memory of attention's value-and-gradient over one 4096-token row, 8 heads: blocks of 512
    queries against the whole row hold [8, 512, 4096] float32 scores (64 MiB) several times; flash's blocks are
    [8, 512, 512] (8 MiB), so it needs less than a third."""
    q = jax.ShapeDtypeStruct((1, 4096, 8, 32), jnp.float32)
    k = jax.ShapeDtypeStruct((1, 4096, 2, 32), jnp.float32)
    pos = jax.ShapeDtypeStruct((1, 4096), jnp.int32)

    def temp(impl):
        def f(q, k, v, p):
            return jnp.sum(blocked_sdpa(q, k, v, p, p, p, p, impl, 512))
        compiled = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(q, k, k, pos).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    blocked, flash = temp("xla"), temp("flash")
    assert blocked >= 3 * 64 * 2**20, blocked
    assert flash < blocked / 3, (flash, blocked)


def test_masks_are_not_hoisted_out_of_a_scan_over_layers():
    """Inside a remat'd scan over layers (as in the model) the block masks depend only on positions and segment
    ids, which the layers share. JAX used to hoist them out of the layer loop all at once: [n, n, B, G, R, chunk,
    chunk] booleans for every (query block, key block) pair, 128 MiB for this 4096-token row (2 GiB at 16k).
    flash_attention ties the integers to the queries so that each mask is built inside its block."""
    b, s, n, g, d = 1, 4096, 8, 2, 32
    pos = jnp.arange(s)[None]
    seg = jnp.zeros((1, s), jnp.int32)

    def layer(x, w):
        def body(x, w):
            q = (x @ w).reshape(b, s, n, d)
            return x + flash_attention(q, q[:, :, :g], q[:, :, :g], pos, pos, seg, seg, 512).reshape(b, s, n * d)
        return jax.checkpoint(body)(x, w), None

    def loss(x, ws):
        return jnp.sum(jax.lax.scan(layer, x, ws)[0] ** 2)

    x = jax.ShapeDtypeStruct((b, s, n * d), jnp.float32)
    ws = jax.ShapeDtypeStruct((2, n * d, n * d), jnp.float32)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, ws).compile()
    assert "pred[8,8," not in compiled.as_text(), "every block pair's mask is materialised at once"
    assert compiled.memory_analysis().temp_size_in_bytes < 128 * 2**20  # 76 MiB here
