"""Controlled train-inference mismatch (`rollout.numerics`): fp8 blockwise quantisation by hand, the engine's state
and graph under each knob, log-probs of a bf16 engine against the float32 trainer, config validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import random_model

import ringjax
from numerics import EPS32, model_logprob_tol
from ringjax.config_io import from_dict
from ringjax.losses import LossConfig
from ringjax.model import abstract_model
from ringjax.trainer.rl import RLConfig
from ringjax.trainer.step import sequence_logprobs
from rollout.config import RolloutConfig
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.numerics import (EngineNumerics, engine_config, engine_state, fp8_dequantize, fp8_qdq, fp8_quantize,
                              matrix_split)
from rollout.types import Request, SamplingParams
from rollout.weights import flat_weights

NOISE = EngineNumerics(weight_noise=0.05, seed=7)


@pytest.fixture(scope="module")
def model():
    return random_model(ringjax.preset("tiny-v2"), seed=0)


def _flat(state) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


# -- fp8 ---------------------------------------------------------------------------------------------------------------
def test_fp8_scales_and_values_of_a_4x4_matrix_by_hand():
    """Block 2: four tiles, scale = amax / 448 each; e4m3 keeps 3 mantissa bits (steps of 16 in [128, 256), 32 in
    [256, 448], 8 in [64, 128))."""
    x = np.array([[1.0, -2.0, 0.5, 0.25],
                  [3.0, 0.0, -7.0, 1.0],
                  [0.0, 0.0, 0.1, -0.2],
                  [0.0, 0.0, 0.3, 0.05]], np.float32)
    q, scale = fp8_quantize(jnp.asarray(x), 2)
    # the all-zero tile: scale 1; float32 division (XLA may multiply by 1/448: one rounding more)
    np.testing.assert_allclose(np.asarray(scale), [[3 / 448, 7 / 448], [1.0, 0.3 / 448]], rtol=2 * EPS32)
    assert q.dtype == jnp.float8_e4m3fn
    # (0, 0): 1 / (3/448) = 149.3 -> 144, -2 -> -298.7 -> -288, 3 -> 448; (0, 1): scale 1/64, every value exact;
    # (1, 1): 0.1 -> 144, -0.2 -> -288, 0.3 -> 448, 0.05 -> 74.7 -> 72
    np.testing.assert_array_equal(np.asarray(q, np.float32), [[144, -288, 32, 16],
                                                              [448, 0, -448, 64],
                                                              [0, 0, 144, -288],
                                                              [0, 0, 448, 72]])
    back = np.asarray(fp8_dequantize(q, scale, 2))
    np.testing.assert_array_equal(back[:2, 2:], x[:2, 2:])  # a power-of-two scale: exact
    np.testing.assert_allclose(back[0, 0], 144 * 3 / 448, rtol=1e-6)


def test_fp8_keeps_representable_values_exactly():
    """Values on the e4m3 grid times a power of two, with 448 in every tile (scale exactly 2^-6): unchanged."""
    rng = np.random.default_rng(0)
    grid = np.asarray(jnp.asarray(rng.uniform(-440, 440, (48, 40)), jnp.float8_e4m3fn), np.float32)
    grid[::16, ::16] = 448.0  # one amax per 16 x 16 tile (the last column of tiles is partial: 40 = 2 * 16 + 8)
    x = grid * 2.0**-6
    np.testing.assert_array_equal(np.asarray(fp8_qdq(jnp.asarray(x), 16)), x)


def test_fp8_relative_error_is_bounded_per_tile():
    """Round to nearest with 3 mantissa bits: |error| <= 2^-4 |x| where x / scale is normal in e4m3 (>= 2^-6), and
    <= 2^-10 scale (half the subnormal spacing 2^-9) below. Partial tiles at both edges."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 70, 45)) * rng.uniform(0.01, 10, (3, 1, 1))).astype(np.float32)
    q, scale = fp8_quantize(jnp.asarray(x), 32)
    assert scale.shape == (3, 3, 2)
    per_elem = np.repeat(np.repeat(np.asarray(scale), 32, axis=1), 32, axis=2)[:, :70, :45]
    err = np.abs(np.asarray(fp8_dequantize(q, scale, 32)) - x)
    normal = np.abs(x) / per_elem >= 2.0**-6
    assert np.all(err[normal] <= 2.0**-4 * np.abs(x[normal]))
    assert np.all(err[~normal] <= 2.0**-10 * per_elem[~normal])
    assert err.max() > 0  # something was rounded


def test_matrix_split_follows_the_logical_axes():
    assert matrix_split(("vocab", "embed")) == (0, 1)
    assert matrix_split(("layers", "embed", "heads", "head_dim")) == (1, 2)  # wq: embed x heads*head_dim
    assert matrix_split(("layers", "heads", "head_dim", "embed")) == (1, 3)  # wo: heads*head_dim x embed
    assert matrix_split(("layers", "expert", "embed", "expert_mlp")) == (2, 3)  # one matrix per expert
    for exact in (("layers", "norm"), ("layers", "heads", "head_dim"), ("layers", "embed", "router_expert"),
                  ("layers", "router_expert"), None):
        assert matrix_split(exact) is None


def test_fp8_engine_state_quantises_each_matrix_and_keeps_routing_exact(model):
    block = 16
    before = _flat(nnx.state(model))
    after = _flat(engine_state(nnx.state(model), EngineNumerics(quant="fp8", fp8_block=block), 0))
    wg = before[("moe_layers", "wg")]  # [L E H F]: every expert its own matrix
    for layer, expert in ((0, 0), (1, 5)):
        np.testing.assert_array_equal(after[("moe_layers", "wg")][layer, expert],
                                      np.asarray(fp8_qdq(jnp.asarray(wg[layer, expert]), block)))
    wo = before[("moe_layers", "wo")]  # [L N D H] -> [N*D, H]
    want = np.asarray(fp8_qdq(jnp.asarray(wo[1].reshape(-1, wo.shape[-1])), block)).reshape(wo.shape[1:])
    np.testing.assert_array_equal(after[("moe_layers", "wo")][1], want)
    np.testing.assert_array_equal(after[("embed",)], np.asarray(fp8_qdq(jnp.asarray(before[("embed",)]), block)))
    for path in (("moe_layers", "router"), ("moe_layers", "expert_bias"), ("moe_layers", "attn_norm"),
                 ("final_norm",)):
        np.testing.assert_array_equal(after[path], before[path])
    assert not np.array_equal(after[("moe_layers", "wq")], before[("moe_layers", "wq")])


# -- weight noise ------------------------------------------------------------------------------------------------------
def test_weight_noise_is_a_fixed_perturbation_per_seed_and_version(model):
    state = nnx.state(model)
    assert engine_state(state, EngineNumerics(weight_noise=0.0), 3) is state  # identity: the same object
    v1, v1_again, v2 = (_flat(engine_state(state, NOISE, v)) for v in (1, 1, 2))
    other_seed = _flat(engine_state(state, EngineNumerics(weight_noise=0.05, seed=8), 1))
    before = _flat(state)
    rel = []
    for path, w in before.items():
        np.testing.assert_array_equal(v1[path], v1_again[path])
        if path[-1] == "expert_bias":  # routing state, not a weight: exact
            np.testing.assert_array_equal(v1[path], w)
            continue
        assert not np.array_equal(v1[path], v2[path]) and not np.array_equal(v1[path], other_seed[path])
        rel.append((v1[path][w != 0] / w[w != 0] - 1) / NOISE.weight_noise)
    rel = np.concatenate(rel)  # the N(0, 1) draws themselves: ~1e5 of them
    assert rel.size > 50_000
    assert abs(rel.mean()) < 0.02 and abs(rel.std() - 1) < 0.02


def test_engine_applies_numerics_to_every_state_it_is_given(model):
    """Constructor, update_weights with a model and with a flat mapping: always engine_state of the trainer's
    weights at the given version; the graph and KV cache keep the trainer's float32 config."""
    engine = JaxEngine(model, slots=2, max_context=32, numerics=NOISE, version=4)
    assert engine.config == model.config and engine.train_config == model.config
    want4 = _flat(engine_state(nnx.state(model), NOISE, 4))
    assert all(np.array_equal(v, want4[p]) for p, v in _flat(engine.state).items())
    engine.update_weights(model, version=5)
    want5 = _flat(engine_state(nnx.state(model), NOISE, 5))
    assert all(np.array_equal(v, want5[p]) for p, v in _flat(engine.state).items())
    engine.update_weights(flat_weights(model), version=4)
    assert all(np.array_equal(v, want4[p]) for p, v in _flat(engine.state).items())


def test_run_config_reaches_the_engine_in_process_and_in_ray_workers(model):
    """`rollout.numerics` of an RL config: the trainer's engine (`make_engine`) and a Ray worker's (`JaxEngineFactory`,
    called here in this process) both hold engine_state of the starting weights."""
    from ringjax.trainer.engines import make_engine
    from rollout.ray_worker import JaxEngineFactory

    want = _flat(engine_state(nnx.state(model), NOISE, 0))
    cfg = from_dict(RLConfig, {"rollout": {"numerics": {"weight_noise": 0.05, "seed": 7}}})
    local = make_engine(model, cfg, None, None)
    worker = JaxEngineFactory(model.config, {k: np.asarray(v) for k, v in flat_weights(model).items()},
                              numerics=cfg.rollout.numerics)(0)
    for engine in (local, worker):
        assert engine.numerics == NOISE
        assert all(np.array_equal(v, want[p]) for p, v in _flat(engine.state).items())


def test_kernel_and_dtype_change_the_engine_graph_not_the_trainer():
    cfg = ringjax.preset("tiny-v2")
    assert engine_config(cfg, EngineNumerics()) is cfg
    assert engine_config(cfg, EngineNumerics(quant="fp8", weight_noise=0.1)) is cfg  # weights only
    assert engine_config(cfg, EngineNumerics(moe="dense")).compute.moe == "dense"
    bf16 = engine_config(cfg, EngineNumerics(dtype="bfloat16", moe="ragged_dot")).compute
    assert (bf16.dtype, bf16.param_dtype, bf16.moe) == ("bfloat16", "bfloat16", "ragged_dot")
    assert cfg.compute.dtype == "float32"


# -- log-probs: engine vs trainer --------------------------------------------------------------------------------------
def _sample_and_score(model, numerics):
    """(engine, engine log-probs, the trainer's float32 `sequence_logprobs` of the same tokens), per response token."""
    rng = np.random.default_rng(2)
    prompts = [rng.integers(2, model.config.vocab_size, size=n).astype(np.int32) for n in (6, 3, 8, 5)]
    engine = JaxEngine(model, slots=4, max_context=32, decode_chunk=8, seed=3, numerics=numerics)
    out = run_to_completion(engine, [Request(f"r{i}", p, SamplingParams(max_tokens=12))
                                     for i, p in enumerate(prompts)])
    width = max(len(p) for p in prompts) + 12
    tokens, segments = np.zeros((len(prompts), width), np.int32), np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p) + 12] = np.concatenate([p, out[f"r{i}"].tokens])
        segments[i, :len(p) + 12] = 1
    positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape)
    logp, _, _ = sequence_logprobs(model, {"tokens": jnp.asarray(tokens), "positions": jnp.asarray(positions),
                                           "segment_ids": jnp.asarray(segments)})
    logp = np.asarray(logp)
    train = np.concatenate([logp[i, len(p) - 1:len(p) + 11] for i, p in enumerate(prompts)])
    infer = np.concatenate([out[f"r{i}"].logprobs for i in range(len(prompts))])
    return engine, infer, train


def test_default_numerics_engine_matches_the_trainer_on_its_live_arrays(model):
    engine, infer, train = _sample_and_score(model, EngineNumerics())
    assert all(a is b for a, b in zip(jax.tree.leaves(engine.state), jax.tree.leaves(nnx.state(model))))  # no copy
    # KV-cache decode vs full forward: float32 rounding only (tests/numerics.py); ~1e-6 in practice
    np.testing.assert_allclose(infer, train, atol=model_logprob_tol(model, 20))


def test_bfloat16_engine_differs_from_the_float32_trainer_within_icepop_band(model):
    engine, infer, train = _sample_and_score(model, EngineNumerics(dtype="bfloat16"))
    abstract = nnx.state(abstract_model(engine.config))  # the engine's leaves have its model's dtypes
    assert [x.dtype for x in jax.tree.leaves(engine.state)] == [x.dtype for x in jax.tree.leaves(abstract)]
    assert jnp.dtype(engine.config.compute.dtype) == jnp.bfloat16
    assert all(c["k"].dtype == jnp.bfloat16 for c in engine._cache.values() if c is not None)
    diff = train - infer  # log k, k = pi_train / pi_infer
    assert np.abs(diff).max() > 5 * model_logprob_tol(model, 20)  # more than float32 reassociation
    # bf16 (8 significant bits) must not push a token out of IcePop's band: log k in [log alpha, log beta]
    band = LossConfig()
    assert np.all(diff > math.log(band.alpha)) and np.all(diff < math.log(band.beta))


# -- config ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("dtype", "float16"), ("quant", "int8"), ("fp8_block", 0),
                                         ("fp8_block", 1.5), ("moe", "auto"), ("weight_noise", -0.1),
                                         ("weight_noise", float("nan")), ("seed", -1), ("seed", 2**32)])
def test_bad_numerics_name_their_key(field, value):
    with pytest.raises(ValueError, match=f"rollout.numerics.{field}="):
        EngineNumerics(**{field: value})


def test_numerics_config_section():
    cfg = from_dict(RLConfig, {"rollout": {"numerics": {"dtype": "bfloat16", "quant": "fp8", "fp8_block": 64,
                                                        "weight_noise": "1e-2"}}})
    n = cfg.rollout.numerics
    assert n == EngineNumerics(dtype="bfloat16", quant="fp8", fp8_block=64, weight_noise=0.01)
    assert n.describe() == "bfloat16, fp8 e4m3 block 64, weight noise 0.01 (seed 0)"
    assert EngineNumerics().describe() == "trainer numerics" and EngineNumerics().is_default
    with pytest.raises(ValueError, match="rollout.numerics.bogus"):
        from_dict(RLConfig, {"rollout": {"numerics": {"bogus": 1}}})
    with pytest.raises(ValueError, match="rollout.numerics .* embedded engine only; rollout.engine is 'sglang'"):
        RolloutConfig(engine="sglang", numerics=EngineNumerics(moe="dense"))
    with pytest.raises(ValueError, match="zero_mismatch=true cannot hold with rl.rollout.numerics"):
        from_dict(RLConfig, {"rollout": {"zero_mismatch": True, "numerics": {"dtype": "bfloat16"}}})
    assert RolloutConfig(engine="sglang").numerics.is_default
