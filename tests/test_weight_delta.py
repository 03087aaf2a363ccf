"""Weight deltas (rollout/weight_delta.py): bit-exact round trips, whole tensors where sparse would not pay, and
every way a delta can meet the wrong weights detected by name. The Ray pool's use of them (a delta update, a worker
repaired by a full send) is tested in tests/test_ray_pool.py."""

import jax.numpy as jnp
import numpy as np
import pytest

from rollout.config import RolloutConfig
from rollout.weight_delta import DeltaMismatch, apply_delta, cast_weights, checksum, make_delta


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return {"embed": rng.normal(size=(64, 16)).astype(jnp.bfloat16), "norm": np.ones(16, np.float32),
            "router_bias": rng.normal(size=(8,)).astype(np.float32), "step": np.array(3, np.int32)}


def changed(w, seed=1):
    """`w` with 5 elements of the embedding changed (one to NaN, one to -0.0) and the router bias replaced."""
    rng = np.random.default_rng(seed)
    new = {k: v.copy() for k, v in w.items()}
    flat = new["embed"].reshape(-1)
    at = rng.choice(flat.size, 5, replace=False)
    flat[at[:3]] += 1
    flat[at[3]], flat[at[4]] = np.nan, -0.0
    new["router_bias"] = rng.normal(size=(8,)).astype(np.float32)
    return new


def assert_bit_equal(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k


def test_round_trip_is_bit_exact_and_only_sends_what_changed():
    base = weights()
    new = changed(base)
    delta = make_delta(base, new, 4, 5)
    assert set(delta.sparse) == {"embed"} and set(delta.whole) == {"router_bias"}  # 8 of 8 changed: whole
    at, values = delta.sparse["embed"]
    assert len(at) == 5 and values.dtype == jnp.bfloat16
    assert delta.changed == 5 + 8 and delta.nbytes < sum(v.nbytes for v in new.values()) / 2
    base_bytes = {k: v.tobytes() for k, v in base.items()}
    out = apply_delta(base, delta, 4)
    assert_bit_equal(out, new)
    assert {k: v.tobytes() for k, v in base.items()} == base_bytes, "the base must not be modified"
    assert out["norm"] is base["norm"], "unchanged tensors are shared, not copied"


def test_nothing_changed_sends_only_checksums():
    base = weights()
    delta = make_delta(base, {k: v.copy() for k, v in base.items()}, 1, 2)
    assert not delta.sparse and not delta.whole and delta.nbytes == 8 * len(base)
    assert_bit_equal(apply_delta(base, delta, 1), base)


def test_new_retyped_and_reshaped_tensors_go_whole():
    base = weights()
    new = dict(base, norm=base["norm"].astype(jnp.bfloat16), router_bias=base["router_bias"].reshape(2, 4),
               extra=np.zeros(3, np.float32))
    delta = make_delta(base, new, 0, 1)
    assert set(delta.whole) == {"norm", "router_bias", "extra"}
    assert_bit_equal(apply_delta(base, delta, 0), new)


def test_wrong_version_is_refused_naming_both_versions():
    base = weights()
    delta = make_delta(base, changed(base), 4, 5)
    with pytest.raises(DeltaMismatch, match="applies to version 4, these weights are version 3"):
        apply_delta(base, delta, 3)


def test_other_weights_under_the_right_version_fail_the_checksum_naming_the_tensor():
    base = weights()
    delta = make_delta(base, changed(base), 4, 5)
    drifted = dict(base, norm=base["norm"] * 2)  # a tensor the delta does not touch
    with pytest.raises(DeltaMismatch, match="tensor 'norm': checksum differs"):
        apply_delta(drifted, delta, 4)
    corrupt = dict(delta.sparse)
    at, values = corrupt["embed"]
    corrupt["embed"] = (at, values + 1)  # damaged on the way
    bad = type(delta)(delta.base_version, delta.version, corrupt, delta.whole, delta.checksums)
    with pytest.raises(DeltaMismatch, match="tensor 'embed': checksum differs"):
        apply_delta(base, bad, 4)


def test_missing_tensor_and_out_of_range_indices_are_refused():
    base = weights()
    delta = make_delta(base, changed(base), 0, 1)
    with pytest.raises(DeltaMismatch, match=r"lack: \['norm'\]"):
        apply_delta({k: v for k, v in base.items() if k != "norm"}, delta, 0)
    at, values = delta.sparse["embed"]
    bad = type(delta)(0, 1, {"embed": (at + base["embed"].size, values)}, delta.whole, delta.checksums)
    with pytest.raises(DeltaMismatch, match="tensor 'embed': delta indices outside its 1024 elements"):
        apply_delta(base, bad, 0)


def test_a_quarter_changed_travels_as_a_bitmask():
    base = weights()
    new = {k: v.copy() for k, v in base.items()}
    flat = new["embed"].reshape(-1)
    at = np.random.default_rng(2).choice(flat.size, flat.size // 4, replace=False)
    flat[at] = -flat[at] - 1  # a bit change at every chosen element
    delta = make_delta(base, new, 0, 1)
    where, values = delta.sparse["embed"]
    assert where.dtype == np.uint8 and where.size == flat.size // 8 and len(values) == len(at)
    assert_bit_equal(apply_delta(base, delta, 0), new)
    short_mask = type(delta)(0, 1, {"embed": (where[:-1], values)}, delta.whole, delta.checksums)
    with pytest.raises(DeltaMismatch, match="tensor 'embed': the delta's bitmask has 127 bytes"):
        apply_delta(base, short_mask, 0)


def test_mostly_changed_tensor_goes_whole():
    base = weights()
    new = dict(base, embed=(base["embed"].astype(np.float32) + 1).astype(jnp.bfloat16))
    delta = make_delta(base, new, 0, 1)
    assert "embed" in delta.whole and "embed" not in delta.sparse


def test_checksum_sees_every_byte_and_cast_leaves_integers():
    a = np.arange(10, dtype=np.float32)
    b = a.copy()
    b.view(np.uint8)[17] ^= 1
    assert checksum(a) != checksum(b) and checksum(a) == checksum(a.copy())
    cast = cast_weights(weights(), "bfloat16")
    assert cast["norm"].dtype == jnp.bfloat16 and cast["embed"].dtype == jnp.bfloat16
    assert cast["step"].dtype == np.int32
    assert cast_weights(weights(), None)["norm"].dtype == np.float32


def test_config_refuses_bad_weight_transfer_settings():
    with pytest.raises(ValueError, match="rollout.weight_dtype='int8'"):
        RolloutConfig(workers=2, weight_dtype="int8")
    with pytest.raises(ValueError, match="rollout.workers is 0"):
        RolloutConfig(weight_delta=True)
    assert RolloutConfig(workers=2, weight_delta=True, weight_dtype="bfloat16").weight_delta
