"""The Ling model core: KV-cache decoding, padding, packing, chunked log-probs, remat, dtypes, attention impls,
frozen expert bias, norm_head, tied embeddings and MTP.

Parameters are drawn with numpy (std 0.1 for matrices, norm weights 1 + N(0, 0.1), expert bias N(0, 0.3)) rather
than the 0.02 init, so attention is far from uniform, routing depends on the bias, and a masking or caching bug
moves the outputs by much more than the fp32 tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ringjax
from ringjax.model import ExpertBias
from ringjax.model.logprobs import token_logprobs
from helpers import random_model

TOL = 1e-5  # fp32 with matmul precision "highest" (conftest)
ARCHS = ["tiny-v1", "tiny-v2"]


def with_config(model, **changes):
    """The same parameters under another config (compute settings, ...)."""
    graphdef, _ = nnx.split(ringjax.abstract_model(model.config.replace(**changes)))
    return nnx.merge(graphdef, nnx.state(model))


def jitted(model, fn):
    """`fn(model, *args)` compiled once, the model passed as state (graphdef static)."""
    graphdef, state = nnx.split(model)
    compiled = jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a))
    return lambda *args: compiled(state, *args)


def _close(a, b, tol=TOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return random_model(ringjax.preset(request.param))


def _tokens(cfg, b, s, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, s), 1, cfg.vocab_size)


# ---------------------------------------------------------------------------------------------------------------
# KV cache

def test_prefill_decode_right_padded(model):
    """Row 0: prompt of 5 right-padded to 8 (pad id 0); row 1: prompt of 8. Then 4 lockstep decode steps at
    per-row positions. Every hidden state and logit equals the row's own unpadded full forward."""
    cfg = model.config
    tokens = _tokens(cfg, 2, 12)
    lens = [5, 8]

    def run(m, tok, pos, cache):
        out = m(tok, pos, cache=cache)
        return out.hidden, m.logits(out.hidden), out.cache

    full = jitted(model, lambda m, t: (lambda o: (o.hidden, m.logits(o.hidden)))(m(t)))
    step = jitted(model, run)
    want_h, want_l = full(tokens)

    prompt = tokens[:, :8].at[0, lens[0]:].set(0)  # padding after row 0's prompt
    cache = ringjax.init_cache(cfg, 2, 16)
    h, logits, cache = step(prompt, jnp.broadcast_to(jnp.arange(8), (2, 8)), cache)
    for b, n in enumerate(lens):
        _close(h[b, :n], want_h[b, :n])
        _close(logits[b, :n], want_l[b, :n])
    assert float(jnp.abs(h[0, lens[0]:] - want_h[0, lens[0]:8]).max()) > 1e-2  # the padding really differs
    for t in range(4):
        pos = jnp.asarray([[lens[0] + t], [lens[1] + t]])
        tok = jnp.take_along_axis(tokens, pos, axis=1)
        h, logits, cache = step(tok, pos, cache)
        for b in range(2):
            _close(h[b, 0], want_h[b, int(pos[b, 0])])
            _close(logits[b, 0], want_l[b, int(pos[b, 0])])


def test_init_cache_rejects_too_long():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ringjax.init_cache(ringjax.preset("tiny-v1"), 1, 10_000)


# ---------------------------------------------------------------------------------------------------------------
# log-probs

def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("chunk, temperature", [(1, 1.0), (3, 0.7), (7, 1.5), (10, 1.0), (64, 0.7)])
def test_chunked_token_logprobs(chunk, temperature):
    """S = 10: chunks of 1, 3 and 7 (last chunk padded), exactly S, and larger than S."""
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 10, 16)).astype(np.float32)
    head = rng.normal(size=(50, 16)).astype(np.float32)
    targets = rng.integers(0, 50, size=(2, 10))
    fn = jax.jit(token_logprobs, static_argnums=(3, 4))
    logp, entropy = fn(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets), chunk, temperature)
    full = _np_log_softmax(hidden.astype(np.float64) @ head.T.astype(np.float64) / temperature)  # [B S V]
    _close(logp, np.take_along_axis(full, targets[..., None], -1)[..., 0])
    _close(entropy, -(np.exp(full) * full).sum(-1))


def test_model_token_logprobs_match_logits(model):
    """Chunked (3 tokens, not dividing S-1 = 10) log-probs equal log_softmax of the full logits, gathered."""
    tokens = _tokens(model.config, 2, 11, seed=1)
    m = with_config(model, **{"compute.logprob_chunk": 3})
    got, _ = jitted(m, lambda m, t: m.token_logprobs(t, temperature=0.8))(tokens)
    logits = jitted(model, lambda m, t: m.logits(m(t).hidden))(tokens)
    want = _np_log_softmax(np.asarray(logits[:, :-1]) / 0.8)
    _close(got, np.take_along_axis(want, np.asarray(tokens[:, 1:, None]), -1)[..., 0])


def test_packed_equals_separate(model):
    cfg = model.config
    a, b = _tokens(cfg, 1, 5, seed=2)[0], _tokens(cfg, 1, 7, seed=3)[0]
    packed = jnp.concatenate([a, b])[None]
    positions = jnp.concatenate([jnp.arange(5), jnp.arange(7)])[None]
    segments = jnp.asarray([[1] * 5 + [2] * 7])
    lp = jitted(model, lambda m, t, p, s: m.token_logprobs(t, p, s))
    got, got_ent = lp(packed, positions, segments)
    separate = jnp.stack([jnp.pad(a, (0, 2)), b])  # right padding cannot reach earlier tokens
    want, want_ent = jitted(model, lambda m, t: m.token_logprobs(t))(separate)
    _close(got[0, :4], want[0, :4])
    _close(got[0, 5:], want[1, :6])
    _close(got_ent[0, 5:], want_ent[1, :6])
    # without segment ids the second sequence sees the first one: the test data can tell the difference
    leaky, _ = lp(packed, positions, jnp.ones_like(segments))
    assert float(jnp.abs(leaky[0, 5:] - want[1, :6]).max()) > 1e-2


# ---------------------------------------------------------------------------------------------------------------
# training paths

def _loss(m, tokens):
    return -jnp.mean(m.token_logprobs(tokens)[0])


def _param_grads(model, tokens):
    graphdef, state = nnx.split(model)

    @jax.jit
    def fn(state, tokens):
        m = nnx.merge(graphdef, state)
        return nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, nnx.Param))(m, tokens)

    return fn(state, tokens)


@pytest.fixture(scope="module")
def v2_grads():
    m = random_model(ringjax.preset("tiny-v2"))
    tokens = _tokens(m.config, 2, 9, seed=4)
    return m, tokens, _param_grads(m, tokens)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_same_loss_and_grads(v2_grads, remat):
    m, tokens, (loss, grads) = v2_grads
    loss_r, grads_r = _param_grads(with_config(m, **{"compute.remat": remat}), tokens)
    _close(loss_r, loss)
    flat, flat_r = nnx.to_flat_state(grads), nnx.to_flat_state(grads_r)
    assert [p for p, _ in flat] == [p for p, _ in flat_r]
    for (path, g), (_, g_r) in zip(flat, flat_r):
        np.testing.assert_allclose(np.asarray(g_r[...]), np.asarray(g[...]), atol=TOL, rtol=TOL, err_msg=str(path))


def test_expert_bias_frozen(v2_grads):
    m, tokens, (_, grads) = v2_grads
    paths = [p for p, _ in nnx.to_flat_state(grads)]
    assert ("moe_layers", "wg") in paths
    assert not any("expert_bias" in p for p in paths)
    assert not any("expert_bias" in p for p, _ in nnx.to_flat_state(nnx.state(m, nnx.Param)))
    biases = nnx.to_flat_state(nnx.state(m, ExpertBias))
    assert {p for p, _ in biases} == {("moe_layers", "expert_bias"), ("mtp", "layers", "expert_bias")}
    assert all(v[...].dtype == jnp.float32 for _, v in biases)
    # the bias is used: shifting it changes the forward pass
    graphdef, state = nnx.split(m)
    loss = jax.jit(lambda s: _loss(nnx.merge(graphdef, s), tokens))
    before = float(loss(state))
    shifted = jax.tree.map(lambda x: x, state)  # new Variables: `state` is left untouched
    shifted["moe_layers"]["expert_bias"][...] = state["moe_layers"]["expert_bias"][...] + jnp.arange(8.0)
    assert abs(float(loss(shifted)) - before) > 1e-4
    assert float(loss(state)) == before


def test_bf16_close_to_fp32(model):
    """bf16 activations (8-bit mantissa, relative rounding 2^-9 per op) over 3 layers give token log-probs within
    0.1 nats of fp32: logits here have std ~0.3-1, so ~1-2% accumulated relative error is ~0.02; an occasional
    routing flip at a near-tie moves one token more, hence 0.1 on the max and 0.02 on the mean. A bf16 bug of
    consequence (a norm or softmax left in bf16 with a wrong eps, a dropped upcast of the logits) exceeds these."""
    tokens = _tokens(model.config, 2, 16, seed=5)
    lp = lambda m, t: m.token_logprobs(t)[0]  # noqa: E731
    want = jitted(model, lp)(tokens)
    got = jitted(with_config(model, **{"compute.dtype": "bfloat16"}), lp)(tokens)
    assert got.dtype == jnp.float32
    diff = np.abs(np.asarray(got) - np.asarray(want))
    assert diff.max() < 0.1 and diff.mean() < 0.02
    assert diff.max() > 0  # bf16 really ran


def test_reference_attention_equals_xla(model):
    tokens = _tokens(model.config, 2, 12, seed=6)
    positions = jnp.asarray([list(range(5)) + list(range(7))] * 2)
    segments = jnp.asarray([[0] * 5 + [1] * 7] * 2)
    fwd = lambda m, t, p, s: m(t, p, s).hidden  # noqa: E731
    want = jitted(model, fwd)(tokens, positions, segments)
    got = jitted(with_config(model, **{"compute.attention": "reference"}), fwd)(tokens, positions, segments)
    _close(got, want)


def test_dense_moe_impl_equals_gather():
    model = random_model(ringjax.preset("tiny-v2"))
    tokens = _tokens(model.config, 2, 12, seed=7)
    fwd = lambda m, t: m(t).hidden  # noqa: E731
    want = jitted(with_config(model, **{"compute.moe": "dense"}), fwd)(tokens)
    _close(jitted(with_config(model, **{"compute.moe": "gather"}), fwd)(tokens), want)


# ---------------------------------------------------------------------------------------------------------------
# heads and extras

def test_norm_head_v1():
    m = random_model(ringjax.preset("tiny-v1"))
    assert m.config.norm_head
    w = np.asarray(m.head_weight(), np.float64)
    raw = np.asarray(m.lm_head[...], np.float64)
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, atol=TOL)  # unit columns over the vocabulary
    assert np.abs(np.linalg.norm(raw, axis=0) - 1).min() > 0.5
    np.testing.assert_allclose(w, raw / np.linalg.norm(raw, axis=0), atol=TOL)
    hidden = jax.random.normal(jax.random.key(0), (1, 3, m.config.hidden_size))
    _close(m.logits(hidden), np.asarray(hidden, np.float64) @ w.T)
    v2 = random_model(ringjax.preset("tiny-v2"))
    np.testing.assert_array_equal(np.asarray(v2.head_weight()), np.asarray(v2.lm_head[...]))


def test_tied_embeddings():
    cfg = ringjax.preset("tiny-v2", tie_word_embeddings=True)
    m = random_model(cfg)
    assert m.lm_head is None
    assert not any("lm_head" in p for p, _ in nnx.to_flat_state(nnx.state(m)))
    tokens = _tokens(cfg, 2, 8)
    hidden, logits, logp = jitted(m, lambda m, t: (lambda h: (h, m.logits(h), m.token_logprobs(t)[0]))(m(t).hidden))(
        tokens)
    _close(logits, np.asarray(hidden, np.float64) @ np.asarray(m.embed[...], np.float64).T)
    assert logp.shape == (2, 7) and bool(jnp.all(jnp.isfinite(logp)))
    assert ringjax.model.count_params(cfg).total == ringjax.model.count_params(
        cfg.replace(tie_word_embeddings=False)).total - cfg.vocab_size * cfg.hidden_size


def test_mtp_hidden():
    depth = 2  # depth 0 reads token p + 1, depth 1 token p + 2: both shifts checked
    cfg = ringjax.preset("tiny-v2", num_nextn_predict_layers=depth)
    m = random_model(cfg)
    tokens = _tokens(cfg, 2, 10, seed=8)
    residual = jitted(m, lambda m, t: m(t).residual)(tokens)
    mtp = jitted(m, lambda m, r, t: m.mtp_hidden(r, t))
    outs = mtp(residual, tokens)
    assert len(outs) == depth and all(o.shape == (2, 10, cfg.hidden_size) for o in outs)
    t = 5
    changed = mtp(residual, tokens.at[:, t + 1].set((tokens[:, t + 1] + 1) % cfg.vocab_size))
    # depth i at position p reads token p + 1 + i: position t - i changes, earlier positions do not
    for i, (o, c) in enumerate(zip(outs, changed)):
        assert float(jnp.abs(o[:, t - i] - c[:, t - i]).max()) > 1e-3
        _close(o[:, :t - i], c[:, :t - i], tol=1e-6)
    with pytest.raises(ValueError, match="no MTP"):
        random_model(ringjax.preset("tiny-v1")).mtp_hidden(residual, tokens)


@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_blocked_attention_equals_whole_row(model, impl):
    """Query blocks of 5 over 12 packed tokens (the last block padded): the same hidden states as one block."""
    tokens = _tokens(model.config, 2, 12, seed=6)
    positions = jnp.asarray([list(range(5)) + list(range(7))] * 2)
    segments = jnp.asarray([[0] * 5 + [1] * 7] * 2)
    fwd = lambda m, t, p, s: m(t, p, s).hidden  # noqa: E731
    whole = with_config(model, **{"compute.attention": impl})
    want = jitted(whole, fwd)(tokens, positions, segments)
    got = jitted(with_config(whole, **{"compute.attention_chunk": 5}), fwd)(tokens, positions, segments)
    _close(got, want)


def test_blocked_attention_same_grads(v2_grads):
    m, tokens, (loss, grads) = v2_grads  # 9 tokens per row: blocks of 4, 4 and a padded 1
    loss_b, grads_b = _param_grads(with_config(m, **{"compute.attention_chunk": 4}), tokens)
    _close(loss_b, loss)
    for (path, g), (_, g_b) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(grads_b)):
        np.testing.assert_allclose(np.asarray(g_b[...]), np.asarray(g[...]), atol=TOL, rtol=TOL, err_msg=str(path))


def test_blocked_prefill_into_cache_equals_whole(model):
    """The engine's prefill path (queries against a longer cache) in blocks of 3 queries."""
    cfg = model.config
    tokens = _tokens(cfg, 2, 8, seed=7)
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))

    def prefill(m, t, p):
        out = m(t, p, cache=ringjax.init_cache(m.config, 2, 16))
        return out.hidden, out.cache

    want_h, want_c = jitted(model, prefill)(tokens, positions)
    got_h, got_c = jitted(with_config(model, **{"compute.attention_chunk": 3}), prefill)(tokens, positions)
    _close(got_h, want_h)
    for a, b in zip(jax.tree.leaves(got_c), jax.tree.leaves(want_c)):
        _close(a, b)


def test_blocked_attention_bounds_the_scores():
    """Compiled temp memory of attention over a 4096-token row: the whole row holds its scores and their softmax
    (about 3 score-sized buffers); blocks of 512 queries hold about as many buffers of one block's size."""
    from ringjax.model.attention import blocked_sdpa

    b, s, n, g, d = 1, 4096, 4, 2, 16
    shapes = [jax.ShapeDtypeStruct((b, s, n, d), jnp.float32)] + [jax.ShapeDtypeStruct((b, s, g, d), jnp.float32)] * 2

    def temp(chunk):
        def f(q, k, v):
            pos = jnp.broadcast_to(jnp.arange(s), (b, s))
            return blocked_sdpa(q, k, v, pos, pos, None, None, "xla", chunk)
        return jax.jit(f).lower(*shapes).compile().memory_analysis().temp_size_in_bytes

    scores = 4 * b * n * s * s  # the whole row's float32 scores: 256 MiB
    assert temp(s) >= scores
    assert temp(512) <= 3 * scores * 512 // s
