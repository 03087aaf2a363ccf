"""Context parallelism (a row's tokens split over the mesh's `context` axis) == the unsharded model, on 8 simulated
CPU devices (conftest): forward, log-probs and their gradients, on packed rows (segment ids), in several layouts;
each device's share of a row runs in several attention blocks and log-prob chunks (small chunk settings), and the
log-probs cut the vocabulary in blocks. The rollout engine decodes on a context mesh too (rows split over it).
Tolerances: the float32 bounds of tests/numerics.py, as in tests/test_sharding.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ringjax
from ringjax.sharding import check_context, make_mesh, state_shardings
from numerics import EPS32, forward_chain, grad_chain, logit_scale, logprob_tol
from test_sharding import _close, random_state

LAYOUTS = {
    "context8": dict(fsdp=1, context=8),
    "data2-context4": dict(data=2, fsdp=1, context=4),
    "fsdp2-context2-tensor2": dict(fsdp=2, context=2, tensor=2),
    "fsdp2-context2-expert2": dict(fsdp=2, context=2, expert=2),
}
ROWS, SEQ = 4, 64
COMPUTE = dict(attention_chunk=4, logprob_chunk=4, logprob_vocab_chunk=128)  # blocks inside every device's share


def packed_rows(cfg, seed=1):
    """ROWS rows of SEQ tokens, each packing sequences of random lengths (positions restart at each)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (ROWS, SEQ))
    positions, segments = np.zeros((ROWS, SEQ), np.int32), np.zeros((ROWS, SEQ), np.int32)
    for r in range(ROWS):
        cuts = np.sort(rng.choice(np.arange(1, SEQ), size=2, replace=False))
        for s, (a, b) in enumerate(zip([0, *cuts], [*cuts, SEQ])):
            positions[r, a:b], segments[r, a:b] = np.arange(b - a), s + 1
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(positions), jnp.asarray(segments)


class Case:
    def __init__(self, name):
        self.cfg = ringjax.preset(name, compute=COMPUTE)
        self.graphdef, self.state = random_state(self.cfg)
        self.batch = packed_rows(self.cfg)
        graphdef = self.graphdef

        def forward(state, tokens, positions, segments):
            m = nnx.merge(graphdef, state)
            return m(tokens, positions, segments).hidden, m.token_logprobs(tokens, positions, segments)

        def loss(params, rest, tokens, positions, segments):
            logp, entropy = nnx.merge(graphdef, params, rest).token_logprobs(tokens, positions, segments)
            return -jnp.mean(logp) - 0.1 * jnp.mean(entropy)

        self.forward, self.grad = jax.jit(forward), jax.jit(jax.value_and_grad(loss))
        self.want = self.forward(self.state, *self.batch)
        model = nnx.merge(graphdef, self.state)
        self.scale = logit_scale(model.head_weight(), model.final_norm[...])
        self.hidden_tol = forward_chain(self.cfg, SEQ) * EPS32 * float(jnp.max(jnp.abs(self.want[0])))
        self.logprob_tol = logprob_tol(self.cfg, SEQ, self.scale)
        self.grad_rel = grad_chain(self.cfg, SEQ, ROWS * SEQ) * EPS32
        self.want_grads = self.grad(*self.split(self.state), *self.batch)

    def split(self, state):
        _, params, rest = nnx.split(nnx.merge(self.graphdef, state), nnx.Param, ...)
        return params, rest


@functools.cache
def case(name):
    return Case(name)


def _split_over_context(x, mesh):
    """The row's token dimension of `x` really is split over the context axis."""
    assert x.sharding.spec[1] == "context", x.sharding.spec
    assert x.addressable_shards[0].data.shape[1] == SEQ // mesh.shape["context"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_and_logprobs_match_the_unsharded_model(layout):
    c, mesh = case("tiny-v2"), make_mesh(**LAYOUTS[layout])
    state = jax.device_put(c.state, state_shardings(c.state, mesh))
    with jax.set_mesh(mesh):
        hidden, (logp, entropy) = c.forward(state, *c.batch)
    _split_over_context(hidden, mesh)
    _close(hidden, c.want[0], c.hidden_tol)
    _close(logp, c.want[1][0], c.logprob_tol)
    _close(entropy, c.want[1][1], c.logprob_tol)


@pytest.mark.parametrize("name, layout", [("tiny-v2", "context8"), ("tiny-v2", "fsdp2-context2-tensor2"),
                                          ("tiny-v1", "fsdp2-context2-expert2")])
def test_gradients_match_the_unsharded_model(name, layout):
    """Through the all-gathered keys and values (reduce-scattered back), the MoE's shard_map over split tokens
    and the per-device log-prob chunks."""
    c, mesh = case(name), make_mesh(**LAYOUTS[layout])
    params, rest = c.split(jax.device_put(c.state, state_shardings(c.state, mesh)))
    with jax.set_mesh(mesh):
        loss, grads = c.grad(params, rest, *c.batch)
    want_loss, want_grads = c.want_grads
    _close(loss, want_loss, c.logprob_tol + ROWS * SEQ * EPS32 * abs(float(want_loss)))
    flat, want_flat = nnx.to_flat_state(grads), nnx.to_flat_state(want_grads)
    assert [p for p, _ in flat] == [p for p, _ in want_flat]
    for (path, g), (_, w) in zip(flat, want_flat):
        _close(g[...], w[...], c.grad_rel * float(jnp.max(jnp.abs(w[...]))), err=str(path))
    for path in (("moe_layers", "wg"), ("moe_layers", "wq"), ("embed",)):  # not trivially zero
        assert np.abs(np.asarray(dict(want_flat)[path][...])).max() > 1e-4, path


def test_attention_gathers_keys_and_values_and_nothing_else_moves_whole_rows():
    """The compiled context-parallel forward all-gathers K/V (and positions, segment ids) per layer; with the
    model's weights replicated over context, no weight is gathered over it."""
    c, mesh = case("tiny-v2"), make_mesh(fsdp=1, context=8)
    state = jax.device_put(c.state, state_shardings(c.state, mesh))
    with jax.set_mesh(mesh):
        hlo = c.forward.lower(state, *c.batch).compile().as_text()
    gathers = [line for line in hlo.splitlines() if "all-gather" in line and "=" in line]
    assert gathers, "no all-gather: the keys and values were not gathered"
    kv = f"[{ROWS},{SEQ},{c.cfg.num_key_value_heads},{c.cfg.head_dim}]"  # the whole rows' K or V
    assert any(kv in line for line in gathers), gathers


def test_a_context_axis_that_does_not_divide_the_row_is_refused():
    mesh = make_mesh(fsdp=1, context=8)
    with pytest.raises(ValueError, match=r"rl.seq_len=60 is not divisible by the mesh context axis \(size 8\)"):
        check_context(mesh, {"sft.seq_len": 64, "rl.seq_len": 60})
    check_context(mesh, {"rl.seq_len": 64})
