"""Routing and grouped experts: against numpy references written from docs/model.md, and against the dense
all-experts product."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ringjax
from ringjax.model.grouped_matmul import (SEGMENT_MIN_ROWS, gather_matmul, grouped_matmul, resolve_impl, segment_matmul,
                                          segment_tile, tile_size)
from ringjax.model.moe import dense_experts, routed_experts
from ringjax.model.routing import route

TOL = 1e-5  # fp32, matmul precision highest (conftest)


# ---------------------------------------------------------------------------------------------------------------
# grouped matmul

def _loop_matmul(x, w, sizes):
    """Row block g (in order) times w[g]; rows past sum(sizes) are zero."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    out = np.zeros((x.shape[0], w.shape[2]))
    start = 0
    for g, n in enumerate(sizes):
        out[start:start + n] = x[start:start + n] @ w[g]
        start += n
    return out


@pytest.mark.parametrize("sizes, rows", [
    ([1, 0, 1, 1], 3),  # tile 1
    ([3, 0, 5, 1], 14),  # tile 4, tail rows past the groups
    ([40, 0, 0, 100, 7, 1, 0, 60], 208),  # tile 16 with empty groups
    ([300, 12, 0, 200], 600),  # tile 32, tail of 88 rows
    ([0, 0, 256, 0], 256),  # one group takes everything
])
@pytest.mark.parametrize("kernel", [gather_matmul, segment_matmul])
def test_cpu_grouped_matmul_vs_loop(kernel, sizes, rows):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    w = rng.normal(size=(len(sizes), 8, 6)).astype(np.float32)
    got = np.asarray(kernel(jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes, jnp.int32)))
    want = _loop_matmul(x, w, sizes)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
    assert np.all(got[sum(sizes):] == 0)


@pytest.mark.parametrize("sizes, rows", [([3, 0, 5, 1], 14), ([40, 0, 0, 100, 7, 1, 0, 60], 208),
                                         ([300, 12, 0, 200], 600)])
def test_segment_matmul_gradients_vs_loop(sizes, rows):
    """The segment kernel's custom backward pass against the float64 loop's exact gradients: dx = dy w_g^T on each
    group's rows (tail rows get none), dw_g = x_g^T dy_g (empty groups get none)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    w = rng.normal(size=(len(sizes), 8, 6)).astype(np.float32)
    dy = rng.normal(size=(rows, 6)).astype(np.float32)
    dx, dw = jax.grad(lambda x, w: jnp.sum(segment_matmul(x, w, jnp.asarray(sizes)) * dy), argnums=(0, 1))(
        jnp.asarray(x), jnp.asarray(w))
    want_dx, want_dw = np.zeros((rows, 8)), np.zeros((len(sizes), 8, 6))
    start = 0
    for g, n in enumerate(sizes):
        rows_g = slice(start, start + n)
        want_dx[rows_g] = dy[rows_g].astype(np.float64) @ w[g].T.astype(np.float64)
        want_dw[g] = x[rows_g].T.astype(np.float64) @ dy[rows_g].astype(np.float64)
        start += n
    np.testing.assert_allclose(np.asarray(dx), want_dx, atol=1e-4, rtol=TOL)
    np.testing.assert_allclose(np.asarray(dw), want_dw, atol=1e-4, rtol=TOL)
    assert np.all(np.asarray(dx)[sum(sizes):] == 0) and np.all(np.asarray(dw)[[i for i, n in enumerate(sizes)
                                                                               if n == 0]] == 0)


def test_cpu_kernel_choice():
    """`auto` on CPU: the looped segment kernel once experts average SEGMENT_MIN_ROWS rows, the fused gather kernel
    below (decode); segment tiles grow with the rows; an explicit choice is kept."""
    assert resolve_impl("auto", SEGMENT_MIN_ROWS * 16, 16) == "segment"
    assert resolve_impl("auto", SEGMENT_MIN_ROWS * 16 - 1, 16) == "gather"
    assert resolve_impl("segment", 16, 16) == "segment" and resolve_impl("dense", 10**6, 16) == "dense"
    assert segment_tile(16, 16) == 8 and segment_tile(2048, 16) == 64 and segment_tile(10**6, 16) == 128


@pytest.mark.parametrize("backend, training, decode", [("gpu", "segment", "gather"),
                                                       ("tpu", "ragged_dot", "ragged_dot")])
def test_accelerator_kernel_choice(backend, training, decode, monkeypatch):
    """`auto` off CPU: XLA:GPU expands ragged_dot into a product over every expert (128 GiB for a 4-layer
    Ling-mini-2.0 train step on an H200), so GPUs take the CPU's kernels; TPUs keep ragged_dot, a native kernel."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert resolve_impl("auto", SEGMENT_MIN_ROWS * 256, 256) == training
    assert resolve_impl("auto", 8 * 256, 256) == decode


def test_tile_sizes_covered():
    """The cases above take tiles 1, 4, 16 and 32; decode-sized inputs avoid one weight gather per row."""
    assert tile_size(3, 4) == 1 and tile_size(14, 4) == 4 and tile_size(208, 8) == 16 and tile_size(600, 4) == 32
    assert tile_size(10**6, 2) == 128
    assert tile_size(16, 16) == 1 and tile_size(64, 16) == 8  # batch 8 / 32, top-2 of 16 experts


_jit_kernels = {"gather": jax.jit(gather_matmul), "segment": jax.jit(segment_matmul)}


@pytest.mark.parametrize("kernel", sorted(_jit_kernels))
@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_cpu_grouped_matmul_property(kernel, data):
    # few distinct shapes (rows in {3, 8, 64}, 1-5 groups: tiles 1, 2, 4, 8, 16, 32) so compiles stay cached;
    # the group sizes, which the kernel sees as data, are arbitrary with sum <= rows
    rows = data.draw(st.sampled_from([3, 8, 64]), label="rows")
    g = data.draw(st.integers(1, 5), label="groups")
    cuts = sorted(data.draw(st.lists(st.integers(0, rows), min_size=g, max_size=g), label="cuts"))
    sizes = np.diff([0] + cuts).tolist()  # non-negative, sum = max(cuts) <= rows
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    w = rng.normal(size=(g, 4, 3)).astype(np.float32)
    got = np.asarray(_jit_kernels[kernel](jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes, jnp.int32)))
    np.testing.assert_allclose(got, _loop_matmul(x, w, sizes), atol=TOL, rtol=TOL)


def test_ragged_dot_matches_loop():
    rng = np.random.default_rng(1)
    sizes = [5, 0, 20, 3]
    x = rng.normal(size=(28, 8)).astype(np.float32)
    w = rng.normal(size=(4, 8, 6)).astype(np.float32)
    got = grouped_matmul(jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes, jnp.int32), "ragged_dot")
    np.testing.assert_allclose(np.asarray(got), _loop_matmul(x, w, sizes), atol=TOL, rtol=TOL)


# ---------------------------------------------------------------------------------------------------------------
# routed experts vs the dense all-experts product

def _moe_inputs(t, e, k, h=16, f=12, used=None, seed=0):
    rng = np.random.default_rng(seed)
    used = np.arange(e) if used is None else np.asarray(used)
    # k distinct experts per token, drawn from `used` (experts outside it receive no token)
    experts = np.stack([rng.permutation(used)[:k] for _ in range(t)]).astype(np.int32)
    weights = rng.uniform(0.1, 1.0, size=(t, k)).astype(np.float32)
    x = rng.normal(size=(t, h)).astype(np.float32)
    wg, wu, wd = ((0.3 * rng.normal(size=shape)).astype(np.float32) for shape in ((e, h, f), (e, h, f), (e, f, h)))
    return tuple(map(jnp.asarray, (x, weights, experts, wg, wu, wd)))


def _numpy_experts(x, weights, experts, wg, wu, wd):
    x, wg, wu, wd = (np.asarray(a, np.float64) for a in (x, wg, wu, wd))
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(np.asarray(weights[t]), np.asarray(experts[t])):
            g, u = x[t] @ wg[e], x[t] @ wu[e]
            out[t] += w * ((g / (1 + np.exp(-g)) * u) @ wd[e])
    return out


CASES = [  # (tokens, experts, top-k, experts that get tokens)
    (4, 8, 2, None),  # M=8 rows: tile 1
    (128, 8, 2, None),  # M=256: tile 8
    (96, 8, 3, [0, 3, 4, 7]),  # half the experts get no token, tile 8
    (200, 4, 1, [2]),  # one expert gets everything, tile 32
    (5, 16, 4, [1, 2, 5, 9, 11]),  # more experts than rows
]


@pytest.mark.parametrize("t, e, k, used", CASES)
def test_dense_reference_vs_numpy(t, e, k, used):
    args = _moe_inputs(min(t, 16), e, k, used=used)
    np.testing.assert_allclose(np.asarray(dense_experts(*args)), _numpy_experts(*args), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("impl", ["gather", "segment", "ragged_dot"])
@pytest.mark.parametrize("t, e, k, used", CASES)
def test_routed_experts_vs_dense(impl, t, e, k, used):
    args = _moe_inputs(t, e, k, used=used)
    got = jax.jit(routed_experts, static_argnames="impl")(*args, impl=impl)
    np.testing.assert_allclose(np.asarray(got), np.asarray(dense_experts(*args)), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("impl", ["gather", "segment"])
@pytest.mark.parametrize("first", [0, 4])
def test_routed_experts_local_slice(first, impl):
    """Expert-parallel shard: only experts [first, first + 4) are computed, the others contribute nothing."""
    x, w, ex, wg, wu, wd = _moe_inputs(64, 8, 2)
    got = routed_experts(x, w, ex, wg[first:first + 4], wu[first:first + 4], wd[first:first + 4], impl, first)
    local_w = jnp.where((ex >= first) & (ex < first + 4), w, 0.0)
    want = dense_experts(x, local_w, ex, wg, wu, wd)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=TOL, rtol=TOL)
    assert float(jnp.abs(want).max()) > 0.1


@pytest.mark.parametrize("impl", ["gather", "segment"])
@pytest.mark.parametrize("t", [6, 96])
def test_cpu_kernel_gradients_vs_dense(t, impl):
    x, w, ex, wg, wu, wd = _moe_inputs(t, 8, 2, used=[0, 1, 2, 6])
    cot = jax.random.normal(jax.random.key(3), x.shape)

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a[:1], a[1], ex, *a[2:]) * cot)

    argnums = (0, 1, 2, 3, 4)
    g_gather = jax.jit(jax.grad(loss(lambda x, w, e, *p: routed_experts(x, w, e, *p, impl=impl)), argnums))(
        x, w, wg, wu, wd)
    g_dense = jax.jit(jax.grad(loss(dense_experts), argnums))(x, w, wg, wu, wd)
    for a, b in zip(g_gather, g_dense):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL)
    assert np.all(np.asarray(g_gather[2])[[3, 4, 5, 7]] == 0)  # experts without tokens get no gradient


# ---------------------------------------------------------------------------------------------------------------
# routing: numpy references straight from docs/model.md (Ling 1.0 / 2.0 routing)

def _ref_v1(logits, k, norm):
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    experts = np.argsort(-p, axis=-1)[:, :k]
    w = np.take_along_axis(p, experts, -1)
    if norm:
        w = w / w.sum(-1, keepdims=True)
    return w, experts


def _ref_v2(logits, bias, k, n_group, topk_group, scale):
    s = 1 / (1 + np.exp(-logits))  # [T E]
    biased = s + bias
    t, e = s.shape
    per = e // n_group
    weights, experts = np.zeros((t, k)), np.zeros((t, k), np.int64)
    for i in range(t):
        groups = biased[i].reshape(n_group, per)
        group_score = np.sort(groups, axis=-1)[:, -2:].sum(-1)
        keep = np.argsort(-group_score)[:topk_group]
        candidates = np.concatenate([np.arange(g * per, (g + 1) * per) for g in keep])
        chosen = candidates[np.argsort(-biased[i][candidates])[:k]]
        w = s[i][chosen]
        experts[i], weights[i] = chosen, w / (w.sum() + 1e-20) * scale
    return weights, experts


def _by_expert(weights, experts):
    order = np.argsort(experts, axis=-1)
    weights = np.take_along_axis(np.asarray(weights, np.float64), order, -1)
    return weights, np.take_along_axis(np.asarray(experts), order, -1)


def _router_inputs(t, h, e, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(t, h)).astype(np.float32), (0.5 * rng.normal(size=(h, e))).astype(np.float32)


@pytest.mark.parametrize("k, norm", [(2, True), (3, True), (2, False)])
def test_route_v1(k, norm):
    cfg = ringjax.preset("tiny-v1", num_experts=16, num_experts_per_tok=k, norm_topk_prob=norm)
    x, router = _router_inputs(64, cfg.hidden_size, 16, seed=k)
    r = jax.jit(route, static_argnums=3)(jnp.asarray(x), jnp.asarray(router), None, cfg)
    want_w, want_e = _ref_v1(x.astype(np.float64) @ router, k, norm)
    got_w, got_e = _by_expert(r.weights, r.experts)
    want_w, want_e = _by_expert(want_w, want_e)
    np.testing.assert_array_equal(got_e, want_e)
    np.testing.assert_allclose(got_w, want_w, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("e, k, n_group, topk_group", [(8, 2, 4, 2), (16, 4, 4, 2), (32, 8, 8, 3), (16, 4, 1, 1)])
def test_route_v2_with_bias(e, k, n_group, topk_group):
    cfg = ringjax.preset("tiny-v2", num_experts=e, num_experts_per_tok=k, n_group=n_group, topk_group=topk_group)
    x, router = _router_inputs(128, cfg.hidden_size, e, seed=e + k)
    bias = np.random.default_rng(7).normal(scale=1.0, size=e).astype(np.float32)  # large vs sigmoid scores in (0, 1)
    logits = x.astype(np.float64) @ router
    r = jax.jit(route, static_argnums=3)(jnp.asarray(x), jnp.asarray(router), jnp.asarray(bias), cfg)
    want_w, want_e = _by_expert(*_ref_v2(logits, bias, k, n_group, topk_group, cfg.routed_scaling_factor))
    got_w, got_e = _by_expert(r.weights, r.experts)
    np.testing.assert_array_equal(got_e, want_e)
    np.testing.assert_allclose(got_w, want_w, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(got_w.sum(-1), cfg.routed_scaling_factor, atol=TOL)
    # the bias must really change the selection in this data, or the test could not catch a bias bug
    _, unbiased_e = _by_expert(*_ref_v2(logits, 0 * bias, k, n_group, topk_group, cfg.routed_scaling_factor))
    assert np.mean(np.any(unbiased_e != want_e, axis=-1)) > 0.3
    # and the weights are the UNBIASED scores: the biased ones give different numbers
    s = 1 / (1 + np.exp(-logits))
    biased_w = np.take_along_axis(s + bias, want_e, -1)
    biased_w = biased_w / biased_w.sum(-1, keepdims=True) * cfg.routed_scaling_factor
    assert np.abs(biased_w - want_w).max() > 0.1


def test_route_v2_group_limit_matters():
    """With a bias that favours one expert of every group, group-limited and global top-k disagree."""
    cfg = ringjax.preset("tiny-v2", num_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2)
    x, router = _router_inputs(128, cfg.hidden_size, 16, seed=11)
    bias = np.zeros(16, np.float32)
    bias[[0, 4, 8, 12]] = 2.0  # best expert of each group
    r = jax.jit(route, static_argnums=3)(jnp.asarray(x), jnp.asarray(router), jnp.asarray(bias), cfg)
    groups = np.asarray(r.experts) // 4
    assert all(len(set(row)) <= 2 for row in groups)  # never more than topk_group groups
    _, want_e = _ref_v2(x.astype(np.float64) @ router, bias, 4, 4, 2, 2.5)
    np.testing.assert_array_equal(np.sort(np.asarray(r.experts), -1), np.sort(want_e, -1))


def test_route_bias_is_fp32_and_weights_fp32():
    cfg = ringjax.preset("tiny-v2")
    x, router = _router_inputs(8, cfg.hidden_size, cfg.num_experts, seed=0)
    r = route(jnp.asarray(x, jnp.bfloat16), jnp.asarray(router, jnp.bfloat16), jnp.zeros(8), cfg)
    assert r.weights.dtype == jnp.float32 and r.experts.dtype == jnp.int32
