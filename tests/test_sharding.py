"""Sharded == unsharded on 8 simulated CPU devices (conftest): forward, log-prob gradients (the shard_map
expert-parallel MoE and its backward), parameters really sharded, and clear errors for meshes that do not divide.

Batch 8 divides every layout's batch axes (data x fsdp x expert); the tiny presets have 8 experts, 4 heads,
2 kv heads, hidden 64, so each layout below divides every parameter. Sharded and unsharded runs sum in different
orders: values agree within the float32 bounds of tests/numerics.py, whatever the CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ringjax
from ringjax.model import model_shardings
from ringjax.sharding import make_mesh, state_shardings, unsharded_large_params
from numerics import EPS32, forward_chain, grad_chain, logit_scale, logprob_tol

LAYOUTS = {
    "data2-fsdp4": dict(data=2, fsdp=4),
    "fsdp2-expert4": dict(fsdp=2, expert=4),
    "data2-expert2-tensor2": dict(data=2, fsdp=1, expert=2, tensor=2),
    "fsdp2-expert2-tensor2": dict(fsdp=2, expert=2, tensor=2),
}
ARCHS = ["tiny-v1", "tiny-v2"]


def random_state(cfg, seed=0):
    """numpy-drawn parameters (std 0.1, norms 1 + N(0, 0.1), expert bias N(0, 0.3)): peaked attention and
    routing, so a wrong collective shows up far above the tolerance."""
    graphdef, abstract = nnx.split(ringjax.abstract_model(cfg))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        scale, offset = (0.1, 1.0) if "norm" in name else ((0.3, 0.0) if "expert_bias" in name else (0.1, 0.0))
        return jnp.asarray(offset + scale * rng.normal(size=x.shape), x.dtype)

    return graphdef, jax.tree_util.tree_map_with_path(draw, abstract)


SEQ = 8  # tokens per row


def forward_tols(cfg, model, hidden) -> tuple[float, float]:
    """(hidden, logits) tolerances of a forward of `model` on SEQ-token rows: a chain of ~2.0e3 float32 reduction
    terms (numerics.forward_chain) at eps32 relative to the values' magnitude: ~2.4e-4 of max |hidden|
    (RMS-normalised) and of the logits' terms sum_i |h_i W_vi| (numerics.logit_scale: ~10 for the random
    parameters here, ~1.6-3.7 at init): ~2.4e-3 here, ~4e-4-9e-4 at init."""
    chain = forward_chain(cfg, SEQ) * EPS32
    return chain * float(jnp.max(jnp.abs(hidden))), chain * logit_scale(model.head_weight(), model.final_norm[...])


class Arch:
    """One architecture's reference: parameters, compiled forward / gradient, unsharded results."""

    def __init__(self, name):
        self.cfg = ringjax.preset(name)
        self.graphdef, self.state = random_state(self.cfg)
        self.tokens = jax.random.randint(jax.random.key(1), (8, SEQ), 0, self.cfg.vocab_size)
        graphdef = self.graphdef

        def forward(state, tokens):
            m = nnx.merge(graphdef, state)
            hidden = m(tokens).hidden
            return hidden, m.logits(hidden)

        def loss(params, rest, tokens):
            return -jnp.mean(nnx.merge(graphdef, params, rest).token_logprobs(tokens)[0])

        self.forward = jax.jit(forward)
        self.grad = jax.jit(jax.value_and_grad(loss))
        self.want = self.forward(self.state, self.tokens)
        self._grads = None
        model = nnx.merge(graphdef, self.state)
        self.scale = logit_scale(model.head_weight(), model.final_norm[...])
        self.hidden_tol, self.logits_tol = forward_tols(self.cfg, model, self.want[0])
        # gradients: the forward chain, its transpose and the sum over the 64 token positions (~4.1e3 terms) at
        # eps32 each: ~4.9e-4 of the largest gradient of each parameter
        self.grad_rel = grad_chain(self.cfg, SEQ, self.tokens.size) * EPS32

    def split(self, state):
        _, params, rest = nnx.split(nnx.merge(self.graphdef, state), nnx.Param, ...)
        return params, rest

    @property
    def want_grads(self):
        if self._grads is None:
            self._grads = self.grad(*self.split(self.state), self.tokens)
        return self._grads


_ARCHS = {}


def arch(name):
    if name not in _ARCHS:
        _ARCHS[name] = Arch(name)
    return _ARCHS[name]


def _close(a, b, tol, err=""):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=0, err_msg=err)


def _check_sharded(state, sizes):
    wg = state["moe_layers"]["wg"][...]
    spec = [a for part in wg.sharding.spec if part for a in ((part,) if isinstance(part, str) else part)]
    for axis in ("fsdp", "expert", "tensor"):
        assert (axis in spec) == (sizes.get(axis, 1) > 1), (axis, wg.sharding.spec)
    assert unsharded_large_params(state, min_size=2**12) == []
    local = wg.addressable_shards[0].data.shape
    assert np.prod(local) * np.prod([sizes.get(a, 1) for a in ("fsdp", "expert", "tensor")]) == np.prod(wg.shape)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ARCHS)
def test_sharded_forward(name, layout):
    a, sizes = arch(name), LAYOUTS[layout]
    mesh = make_mesh(**sizes)
    state = jax.device_put(a.state, state_shardings(a.state, mesh))
    _check_sharded(state, sizes)
    with jax.set_mesh(mesh):
        hidden, logits = a.forward(state, a.tokens)
    _close(hidden, a.want[0], a.hidden_tol)
    _close(logits, a.want[1], a.logits_tol)


@pytest.mark.parametrize("name, layout", [("tiny-v1", "fsdp2-expert4"), ("tiny-v2", "fsdp2-expert2-tensor2")])
def test_create_model_sharded_equals_unsharded(name, layout):
    a, sizes = arch(name), LAYOUTS[layout]
    mesh = make_mesh(**sizes)
    sharded = ringjax.create_model(a.cfg, mesh, seed=3)
    plain = ringjax.create_model(a.cfg, seed=3)
    state, plain_state = nnx.state(sharded), nnx.state(plain)
    _check_sharded(state, sizes)
    for (path, x), (_, y) in zip(nnx.to_flat_state(state), nnx.to_flat_state(plain_state)):
        # jitted vs eager init may differ by one ulp of the 0.02 * normal product
        np.testing.assert_allclose(np.asarray(x[...]), np.asarray(y[...]), atol=1e-7, rtol=0, err_msg=str(path))
    with jax.set_mesh(mesh):
        got = a.forward(state, a.tokens)
    want = a.forward(plain_state, a.tokens)
    hidden_tol, logits_tol = forward_tols(a.cfg, plain, want[0])
    _close(got[0], want[0], hidden_tol)
    _close(got[1], want[1], logits_tol)


@pytest.mark.parametrize("name, layout", [("tiny-v2", "fsdp2-expert4"), ("tiny-v2", "fsdp2-expert2-tensor2")])
def test_sharded_grads(name, layout):
    """expert > 1 and fsdp > 1 in both: all-gathers of tokens and weights, psum_scatter back, and (second case)
    the psum over a tensor-split expert width, all differentiated through shard_map."""
    a, sizes = arch(name), LAYOUTS[layout]
    mesh = make_mesh(**sizes)
    params, rest = a.split(jax.device_put(a.state, state_shardings(a.state, mesh)))
    with jax.set_mesh(mesh):
        loss, grads = a.grad(params, rest, a.tokens)
    want_loss, want_grads = a.want_grads
    # a mean of 56 log-probs: one log-prob tolerance (numerics.logprob_tol, ~2.6e-3) plus the 56-term sum
    _close(loss, want_loss, logprob_tol(a.cfg, SEQ, a.scale) + a.tokens[:, 1:].size * EPS32 * abs(float(want_loss)))
    flat, want_flat = nnx.to_flat_state(grads), nnx.to_flat_state(want_grads)
    assert [p for p, _ in flat] == [p for p, _ in want_flat]
    for (path, g), (_, w) in zip(flat, want_flat):
        _close(g[...], w[...], a.grad_rel * float(jnp.max(jnp.abs(w[...]))), err=str(path))
    wg = np.asarray(want_flat[[p for p, _ in want_flat].index(("moe_layers", "wg"))][1][...])
    assert np.abs(wg).max() > 1e-3  # the expert gradients are not trivially zero


def test_mesh_that_does_not_divide():
    mesh = make_mesh(fsdp=1, tensor=8)  # 2 kv heads / 4 heads over 8 tensor shards
    cfg = ringjax.preset("tiny-v2")
    with pytest.raises(ValueError, match=r"parameter \S+/w[kvq] dim 2 \(size [24], logical axis '(kv_)?heads'\).*"
                                         r"\('tensor',\) of size 8"):
        model_shardings(cfg, mesh)
    with pytest.raises(ValueError, match=r"parameter \S+/w[kvq] .*'(kv_)?heads'"):
        ringjax.create_model(cfg, mesh)
    with pytest.raises(ValueError, match=r"moe_layers/w[gud] dim 1 \(size 12, logical axis 'expert'\)"):
        model_shardings(ringjax.preset("tiny-v1", num_experts=12, n_group=1, topk_group=1),
                        make_mesh(fsdp=1, expert=8))


def test_batch_not_dividing_mesh_raises():
    a = arch("tiny-v2")
    mesh = make_mesh(**LAYOUTS["fsdp2-expert4"])
    state = jax.device_put(a.state, state_shardings(a.state, mesh))
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="batch 4 is not divisible"):
        a.forward(state, a.tokens[:4])


def test_make_mesh():
    assert dict(make_mesh(data=2, fsdp=-1).shape) == {"data": 2, "fsdp": 4, "context": 1, "expert": 1, "tensor": 1}
    assert dict(make_mesh(fsdp=2, context=-1).shape) == {"data": 1, "fsdp": 2, "context": 4, "expert": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(data=2, fsdp=8)
    with pytest.raises(ValueError, match="only one mesh axis"):
        make_mesh(data=-1, fsdp=-1)
