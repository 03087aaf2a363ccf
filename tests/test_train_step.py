"""The train step: micro-batch invariance (exactly one phi-token update however it is split), sharded ==
unsharded, frozen router bias and MTP, skip on non-finite values, zero advantage -> no change, optimiser config.

The equivalence tests compare what one step computes before an optimiser amplifies rounding (tests/numerics.py):
its loss, gradient norm and update under SGD with learning rate 1 (minus the gradient), within float32 bounds."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ringjax
from ringjax.losses import LossConfig
from ringjax.trainer import Response, assemble_step, pack_micro_batches
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.optim import OptimConfig, learning_rate, make_optimizer
from ringjax.trainer.state import abstract_train_state, init_train_state, split_model
from ringjax.trainer.step import finalize_metrics, make_train_step, rl_loss_fn, sequence_logprobs
from numerics import assert_same_train_steps, flat, params_logprob_tol

PHI = 64
SEQ = 24  # micro-batch row length
LR = 1e-3
LOSS = LossConfig()
OPTIM = OptimConfig(lr=LR)
CFG = ringjax.preset("tiny-v2")
# Equivalence runs use SGD, learning rate 1: its first update is minus the gradient, while AdamW's is ~lr * sign(g),
# which turns rounding-level gradients into parameter differences of order lr. The momentum trace gives it a
# parameter-shaped optimiser state, sharded and donated like Adam's moments; its first update is still -g.
SGD = optax.sgd(1.0, momentum=0.9)


class Run(NamedTuple):
    state: object  # TrainState after the steps
    sums: list  # finalize_metrics of each step
    params: list  # host parameters {path: float64} before the first step and after each (the step donates them)


def _responses(seed=0, n=12, advantage=None):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = int(rng.integers(3, 12))
        adv = float(rng.normal()) if advantage is None else advantage
        out.append(Response(prompt_id=i, prompt=rng.integers(1, 500, 5), tokens=rng.integers(1, 500, m),
                            logp_infer=-6.2 + 0.3 * rng.normal(size=m), reward=0.0, advantage=adv))
    return out


def _batch(responses, rows, loss=LOSS, packed=True):
    step, _ = assemble_step(responses, PHI)
    return stack_micro_batches(pack_micro_batches(step, rows, SEQ, packed=packed), loss.aggregation, step.phi)


def _run(batch, mesh=None, loss=LOSS, optim=OPTIM, steps=1, cfg=None, tx=None, logp_old="inline") -> Run:
    cfg = cfg or CFG
    tx = make_optimizer(optim) if tx is None else tx
    model = ringjax.create_model(cfg, mesh, seed=0)
    graphdef, state = init_train_state(model, tx, 0, mesh)
    abstract = abstract_train_state(cfg, tx, mesh)[1] if mesh is not None else None
    fn = make_train_step(graphdef, tx, rl_loss_fn(loss), state_shardings=abstract, logp_old=logp_old)
    all_sums, params = [], [flat(state.params)]
    for _ in range(steps):
        if mesh is not None:
            with jax.set_mesh(mesh):
                state, sums = fn(state, fn.inputs(batch, mesh))
        else:
            state, sums = fn(state, fn.inputs(batch))
        all_sums.append(finalize_metrics(jax.device_get(sums)))
        params.append(flat(state.params))
    return Run(state, all_sums, params)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _assert_same_steps(got: Run, want: Run, batch):
    """Two runs of the same steps from the same start: losses, step 1's gradient norm and update (numerics:
    at init, log-prob tolerance ~6.7e-4; loss within ~1.4e-3 x sum_t w_t |A_t| ~ 0.6; gradients within ~1.9e-3 of
    each parameter's largest; gradient norm ~5.8e-3 relative, its own 32768-term sum of squares dominating)."""
    weight = float(np.sum(batch["token_weights"] * np.abs(batch["advantages"])))  # sum_t w_t |A_t|
    assert want.sums[0]["tokens"] == PHI
    assert_same_train_steps(CFG, SEQ, 8 * SEQ, weight, got[1:], want[1:])


@pytest.fixture(scope="module")
def reference():
    batch = _batch(_responses(), rows=8)
    return _run(batch, steps=2, tx=SGD), batch


@pytest.mark.parametrize("rows, packed", [(2, True), (4, False)])
def test_micro_batch_split_does_not_change_the_update(reference, rows, packed):
    want, one = reference
    batch = _batch(_responses(), rows=rows, packed=packed)
    assert batch["tokens"].shape[0] > 1 and int(batch["loss_mask"].sum()) == PHI
    _assert_same_steps(_run(batch, steps=2, tx=SGD), want, one)


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean"])
def test_micro_batch_split_other_aggregations(aggregation):
    loss = LossConfig(aggregation=aggregation)
    one = _batch(_responses(), rows=8, loss=loss)
    many = _batch(_responses(), rows=2, loss=loss)
    _assert_same_steps(_run(many, loss=loss, steps=2, tx=SGD), _run(one, loss=loss, steps=2, tx=SGD), one)


def test_varying_micro_batch_counts_compile_once():
    """Steps whose packing yields 2, 4 and 3 micro-batches run on ONE compiled accumulate and apply, in chunks of
    2 (the last one padded with an empty micro-batch, which is skipped): the same updates as one micro-batch per
    call, whose chunk of 1 needs no padding."""
    runs = {}
    for chunk in (1, 2):
        graphdef, state = init_train_state(ringjax.create_model(CFG, seed=0), SGD, 0)
        fn = make_train_step(graphdef, SGD, rl_loss_fn(LOSS), chunk=chunk)
        counts, metrics = [], []
        for seed, n in [(0, 3), (1, 12), (2, 7)]:
            step, _ = assemble_step(_responses(seed, n), sum(len(r) for r in _responses(seed, n)))
            batch = stack_micro_batches(pack_micro_batches(step, 2, SEQ), LOSS.aggregation, step.phi)
            inputs = fn.inputs(batch)
            counts.append((inputs.micro_batches, len(inputs.chunks)))
            state, sums = fn(state, inputs)
            metrics.append(finalize_metrics(jax.device_get(sums)))
            assert metrics[-1]["tokens"] == step.phi
        assert fn.compiles == {"accumulate": 1, "apply": 1} and int(state.step) == 3
        runs[chunk] = counts, metrics, flat(state.params)
    assert runs[1][0] == [(2, 2), (4, 4), (3, 3)] and runs[2][0] == [(2, 1), (4, 2), (3, 2)]
    for one, two in zip(runs[1][1], runs[2][1]):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-7)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    for key, value in runs[1][2].items():
        np.testing.assert_allclose(runs[2][2][key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_sharded_step_equals_unsharded(reference):
    want, batch = reference
    mesh = ringjax.make_mesh(fsdp=2, expert=4)
    got = _run(batch, mesh=mesh, steps=2, tx=SGD)
    _assert_same_steps(got, want, batch)
    wg = got.state.params["moe_layers"]["wg"][...]
    assert not wg.sharding.is_fully_replicated  # params stay sharded through the donated step
    trace = optax.tree_utils.tree_get(got.state.opt_state, "trace")  # the momentum: parameter-shaped state
    assert not trace["moe_layers"]["wg"][...].sharding.is_fully_replicated


@pytest.mark.parametrize("layout", [dict(fsdp=2, context=4), dict(fsdp=2, context=2, expert=2)])
def test_context_parallel_step_equals_unsharded(reference, layout):
    """Every row's 24 tokens split over the context axis (6 or 12 per device): the same two updates, and the
    parameters and optimizer state stay split over fsdp x context."""
    want, batch = reference
    mesh = ringjax.make_mesh(**layout)
    got = _run(batch, mesh=mesh, steps=2, tx=SGD)
    _assert_same_steps(got, want, batch)
    spec = got.state.params["moe_layers"]["wg"][...].sharding.spec
    assert any(isinstance(p, tuple) and "context" in p for p in spec), spec


def test_first_step_metrics_and_state(reference):
    (state, sums, params), _ = reference
    m = sums[0]
    # one update per step: logp_old is the pre-update policy's, the gradient pass's own log-probs, so every ratio
    # is 1 (within one log-prob tolerance, ~6.7e-4, with a separate pass; a stale logp_old would be off by the
    # step's update, logp_infer by ~0.3)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=params_logprob_tol(CFG, SEQ, params[0])) and m["clip_frac"] == 0.0
    assert m["update_skipped"] == 0.0 and int(state.step) == 2 and int(state.skipped) == 0
    assert 0 < m["logp_diff_mean"] <= m["logp_diff_max"]
    assert 0 <= m["icepop_masked_frac"] < 1 and m["entropy_mean"] > 0


def test_inline_logp_old_equals_a_separate_pass():
    """logp_old from the gradient pass itself (the default: one forward less) against a separate forward under the
    same pre-update weights: the same updates, losses and old-policy diagnostics, to float32 rounding."""
    responses = [dataclasses.replace(r, versions=np.zeros(len(r), np.int32)) for r in _responses()]
    batch = _batch(responses, rows=4)
    inline, separate = (_run(batch, steps=2, tx=SGD, logp_old=mode) for mode in ("inline", "pass"))
    for a, b in zip(inline.params, separate.params, strict=True):
        assert _max_diff(a, b) < 1e-5
    for a, b in zip(inline.sums, separate.sums, strict=True):
        assert a.keys() == b.keys() and a["tokens_gap0"] + a.get("tokens_gap1", 0) == a["tokens"] > 0
        gaps = [k for k in a if k.startswith("logp_diff_gap")]
        assert gaps  # the old-policy diagnostics are taken in both modes
        for key in ("loss", "pg_loss", "logp_diff_mean", "icepop_masked_frac", *gaps):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
        assert a["ratio_mean"] == 1.0  # the gradient pass is its own old policy: every ratio exactly 1
    with pytest.raises(ValueError, match="logp_old='twice'"):
        make_train_step(*init_train_state(ringjax.create_model(CFG, seed=0), SGD, 0)[:1], SGD, rl_loss_fn(LOSS),
                        logp_old="twice")


def test_logp_old_is_the_chunked_forward():
    """The step's logp_old path equals the model's own token_logprobs on each packed row."""
    model = ringjax.create_model(ringjax.preset("tiny-v2"), seed=0)
    batch = _batch(_responses(), rows=4)
    mb = {k: jnp.asarray(v[0]) for k, v in batch.items()}
    got, _, _ = sequence_logprobs(model, mb)
    want, _ = model.token_logprobs(mb["tokens"], mb["positions"], mb["segment_ids"])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_frozen_bias_and_mtp_never_change(reference):
    (state, _, _), _ = reference
    _, _, frozen0 = split_model(ringjax.create_model(ringjax.preset("tiny-v2"), seed=0))
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.frozen)}
    assert any("expert_bias" in n for n in names) and any("mtp" in n for n in names)
    assert not any("expert_bias" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
        state.params))
    assert _max_diff(state.frozen, frozen0) == 0.0
    # while the trainable parameters moved: by the gradient (SGD, learning rate 1), up to ~0.15
    assert _max_diff(state.params, split_model(ringjax.create_model(ringjax.preset("tiny-v2"), seed=0))[1]) > 1e-2


def test_zero_advantage_changes_nothing():
    batch = _batch(_responses(advantage=0.0), rows=4)
    state, sums, _ = _run(batch, optim=OptimConfig(lr=LR, weight_decay=0.0))
    _, params0, _ = split_model(ringjax.create_model(ringjax.preset("tiny-v2"), seed=0))
    assert sums[0]["grad_norm"] == 0.0
    assert _max_diff(state.params, params0) == 0.0


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_step_is_skipped_and_counted(value):
    batch = _batch(_responses(), rows=4)
    b, r, j = np.argwhere(batch["loss_mask"])[0]
    batch["advantages"][b, r, j] = value
    state, sums, _ = _run(batch)
    _, params0, _ = split_model(ringjax.create_model(ringjax.preset("tiny-v2"), seed=0))
    assert sums[0]["update_skipped"] == 1.0 and int(state.skipped) == 1 and int(state.step) == 1
    assert _max_diff(state.params, params0) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.opt_state) if x.dtype == jnp.float32)
    counts = optax.tree_utils.tree_get_all_with_path(state.opt_state, "count")
    assert counts and all(int(c) == 0 for _, c in counts)  # the optimiser did not advance either


def test_icepop_masks_a_token_the_engine_scored_minus_inf():
    """k = inf lies outside [alpha, beta]: IcePop gives the token weight 0, the update goes on and stays finite."""
    batch = _batch(_responses(), rows=4)
    b, r, j = np.argwhere(batch["loss_mask"])[0]
    batch["logp_infer"][b, r, j] = -np.inf
    state, sums, _ = _run(batch)
    m = sums[0]
    assert m["update_skipped"] == 0.0 and m["icepop_masked_frac"] >= 1 / PHI and m["logp_diff_max"] == np.inf
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))


def test_optimizer_config():
    with pytest.raises(ValueError, match="optim.lr=-1"):
        OptimConfig(lr=-1)
    with pytest.raises(ValueError, match="total_steps"):
        OptimConfig(schedule="cosine", warmup_steps=10)
    sched = learning_rate(OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", total_steps=110, min_lr_ratio=0.1))
    np.testing.assert_allclose([float(sched(s)) for s in (0, 5, 10, 60, 110)], [0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)


def test_weight_decay_skips_norms():
    tx = make_optimizer(OptimConfig(lr=0.1, weight_decay=0.5, grad_clip=0.0))
    params = {"attn_norm": jnp.ones((2, 4)), "wq": jnp.ones((2, 4))}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    assert float(jnp.abs(updates["attn_norm"]).max()) == 0.0
    np.testing.assert_allclose(np.asarray(updates["wq"]), -0.1 * 0.5, rtol=1e-6)


def test_bad_batch_shapes():
    step, _ = assemble_step(_responses(), PHI)
    mbs = pack_micro_batches(step, 4, 24) + pack_micro_batches(step, 2, 24)[:1]
    with pytest.raises(ValueError, match="different shapes"):
        stack_micro_batches(mbs, "c3po", PHI)
