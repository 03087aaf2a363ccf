"""Memory plan: exact per-device parameter / optimizer sizes against real sharded arrays, full-size sanity."""

import functools
import json
import time

import jax
import pytest
from flax import nnx

import ringjax
from ringjax.plan import GiB, plan_memory
from ringjax.trainer import OptimConfig, init_train_state, make_optimizer

MESH = {"fsdp": 2, "expert": 2, "tensor": 2}


def device0_bytes(tree, device) -> int:
    """Bytes that `device` holds of every array of `tree` (its addressable shards)."""
    return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards if s.device == device)


@pytest.fixture(scope="module")
def mesh():
    return ringjax.make_mesh(**MESH)


@functools.cache
def created(param_dtype, mesh):
    """tiny-v2 created sharded on `mesh` (cached: each creation compiles)."""
    return ringjax.create_model(ringjax.preset("tiny-v2", compute=dict(param_dtype=param_dtype)), mesh)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_param_bytes_match_created_model(mesh, param_dtype):
    cfg = ringjax.preset("tiny-v2", compute=dict(param_dtype=param_dtype))
    plan = plan_memory(cfg, MESH, rows=8, seq_len=32)
    model = created(param_dtype, mesh)
    dev = mesh.devices.flat[0]
    assert plan.param_bytes == device0_bytes(nnx.state(model), dev)
    arrays = dict(nnx.to_flat_state(nnx.state(model)))
    assert len(plan.largest_params) == 5
    for name, shape, shard in plan.largest_params:
        array = arrays[tuple(name.split("/"))].get_value()
        assert array.shape == shape
        assert next(s.data.shape for s in array.addressable_shards if s.device == dev) == shard
    assert plan.params_total == ringjax.count_params(cfg).total


def test_grad_and_optimizer_bytes_match_train_state(mesh):
    cfg = ringjax.preset("tiny-v2")
    plan = plan_memory(cfg, MESH, rows=8, seq_len=32)
    _, state = init_train_state(created("float32", mesh), make_optimizer(OptimConfig()), mesh=mesh)
    dev = mesh.devices.flat[0]
    trainable = device0_bytes(state.params, dev)
    frozen = device0_bytes(state.frozen, dev)
    assert frozen > 0 and plan.param_bytes == trainable + frozen
    assert plan.grad_bytes == trainable  # float32 params: the float32 accumulator has their size
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]  # drop the scalar step counters
    assert plan.optimizer_bytes == device0_bytes(moments, dev) == 2 * trainable


def test_ring_1t_on_4096_devices():
    cfg = ringjax.preset("ring-1t", compute=dict(dtype="bfloat16", param_dtype="bfloat16", remat="full"))
    start = time.perf_counter()
    plan = plan_memory(cfg, {"fsdp": 256, "expert": 16}, rows=4096, seq_len=4096, device_memory_gb=16)
    assert time.perf_counter() - start < 10
    count = ringjax.count_params(cfg)
    assert (plan.params_total, plan.params_active) == (count.total, count.active)
    assert plan.devices == 4096 and plan.mesh == {"data": 1, "fsdp": 256, "context": 1, "expert": 16,
                                                         "tensor": 1}
    parts = [plan.param_bytes, plan.grad_bytes, plan.optimizer_bytes, plan.activation_bytes, plan.attention_bytes,
             plan.logits_bytes]
    assert all(p > 0 for p in parts) and plan.total_bytes == sum(parts)
    # Expert weights split 4096 ways, the rest 256 ways (fsdp only); frozen MTP adds ~1.5%.
    assert count.total * 2 / 4096 < plan.param_bytes < count.total * 1.05 * 2 / 256
    assert plan.grad_bytes == plan.optimizer_bytes / 2 < plan.param_bytes * 2
    # one row per device, one 1024-token chunk, one vocabulary block: 157184 = 8 strided blocks of 19648 <= 32768
    assert cfg.vocab_size == 8 * 19648 and plan.logits_bytes == 1 * 1024 * 19648 * 4 * 2
    assert plan.fits is False and plan.device_memory_bytes == 16 * GiB
    assert plan.largest_params[0][0] in ("moe_layers/wd", "moe_layers/wg", "moe_layers/wu")
    assert plan.largest_params[0][2][1] == 256 // 16
    assert plan.table().splitlines()[-1].startswith("fits: no (")
    assert json.loads(json.dumps(plan.as_dict()))["device_memory_gib"] == 16.0


def test_activation_estimate_orders_remat_policies_and_scales_with_batch_shards():
    cfg = ringjax.preset("ling-mini-2.0", compute=dict(dtype="bfloat16"))
    act = {r: plan_memory(cfg.replace(compute=dict(remat=r)), {"fsdp": 8}, rows=64, seq_len=2048).activation_bytes
           for r in ("none", "dots", "full")}
    assert act["full"] < act["dots"] < act["none"]
    wide = plan_memory(cfg, {"fsdp": 8, "data": 8}, rows=64, seq_len=2048)
    assert wide.activation_bytes < act["none"]
    # Fewer rows than batch shards still costs one row per device.
    one_row = plan_memory(cfg, {"fsdp": 8}, rows=8, seq_len=2048)
    assert plan_memory(cfg, {"fsdp": 8}, rows=1, seq_len=2048).activation_bytes == one_row.activation_bytes


def test_context_parallelism_halves_the_token_part_and_counts_the_gathered_kv():
    """context=2 holds half of each row's tokens (same rows per device), plus one layer's K/V of the whole rows."""
    cfg = ringjax.preset("ling-mini-2.0", compute=dict(dtype="bfloat16", remat="full"))
    seq = 8192
    whole = plan_memory(cfg, {"fsdp": 8}, rows=16, seq_len=seq)
    half = plan_memory(cfg, {"fsdp": 8}, rows=16, seq_len=seq // 2)
    split = plan_memory(cfg, {"fsdp": 8, "context": 2}, rows=16, seq_len=seq)
    assert split.devices == 16 and split.mesh["context"] == 2
    # The token part is linear in the tokens, the rest (one layer's gathered weights) the same in all three plans.
    weights = 2 * half.activation_bytes - whole.activation_bytes
    assert 0 < weights < half.activation_bytes
    # Keys and values of two whole rows per device (16 rows / 8 batch shards), bf16, held with their gradients.
    kv = 2 * (2 * 2 * seq * cfg.num_key_value_heads * cfg.head_dim * 2)
    assert split.activation_bytes - kv - weights == (whole.activation_bytes - weights) // 2
    # tensor=2 splits the gathered KV heads too
    tp = plan_memory(cfg, {"fsdp": 8, "context": 2, "tensor": 2}, rows=16, seq_len=seq)
    tp_half = plan_memory(cfg, {"fsdp": 8, "tensor": 2}, rows=16, seq_len=seq // 2)
    assert tp.activation_bytes - tp_half.activation_bytes == kv // 2
    # Parameters are split over fsdp x context (ZeRO-3 style) as over 16 fsdp devices; the log-prob chunk is the
    # device's own share at most.
    fsdp16 = plan_memory(cfg, {"fsdp": 16}, rows=16, seq_len=seq)
    assert (split.param_bytes, split.grad_bytes, split.optimizer_bytes) == (
        fsdp16.param_bytes, fsdp16.grad_bytes, fsdp16.optimizer_bytes)
    assert split.param_bytes < 0.6 * whole.param_bytes
    short = plan_memory(cfg, {"fsdp": 8, "context": 4}, rows=8, seq_len=1024)
    assert short.logits_bytes == plan_memory(cfg, {"fsdp": 8}, rows=8, seq_len=257).logits_bytes


def test_attention_block_spans_the_whole_row():
    """One block of attention_chunk queries against every key of the row: its float32 scores (x3) and mask are
    sized by seq_len, not the device's share; cuDNN keeps only a mask of the share."""
    cfg = ringjax.preset("ling-mini-2.0", compute=dict(dtype="bfloat16", remat="full", attention_chunk=256))
    plan = plan_memory(cfg, {"fsdp": 4, "context": 2}, rows=8, seq_len=8192)
    assert plan.attention_bytes == 2 * 256 * 8192 * (3 * cfg.num_attention_heads * 4 + 1)
    half = plan_memory(cfg.replace(**{"compute.attention_chunk": 128}), {"fsdp": 4, "context": 2}, rows=8,
                       seq_len=8192)
    assert 2 * half.attention_bytes == plan.attention_bytes and half.total_bytes < plan.total_bytes
    cudnn = plan_memory(cfg.replace(**{"compute.attention": "cudnn"}), {"fsdp": 4, "context": 2}, rows=8,
                        seq_len=8192)
    assert cudnn.attention_bytes == 2 * 4096 * 8192
    flash = plan_memory(cfg.replace(**{"compute.attention": "flash"}), {"fsdp": 4, "context": 2}, rows=8,
                        seq_len=8192)
    assert flash.attention_bytes == 2 * 256 * 256 * (3 * cfg.num_attention_heads * 4 + 1)  # key blocks of 256
    assert "attention (est.)" in plan.table() and plan.as_dict()["attention_gib"] > 0


def test_engine_kv_cache_splits_slots_over_context():
    cfg = ringjax.preset("tiny-v2")
    flat = plan_memory(cfg, {"fsdp": 4}, rows=4, seq_len=64, kv_slots=16, kv_context=64)
    split = plan_memory(cfg, {"fsdp": 4, "context": 2}, rows=4, seq_len=64, kv_slots=16, kv_context=64)
    assert flat.kv_cache_bytes == 2 * split.kv_cache_bytes > 0


def test_seq_len_not_divisible_by_context_is_named():
    with pytest.raises(ValueError, match=r"seq_len=30 is not divisible by the mesh context axis \(size 4\)"):
        plan_memory(ringjax.preset("tiny-v2"), {"fsdp": 2, "context": 4}, rows=8, seq_len=30)


def test_fits_switches_with_device_memory():
    cfg = ringjax.preset("tiny-v2")
    unknown = plan_memory(cfg, MESH, rows=8, seq_len=64)
    assert unknown.fits is None and unknown.device_memory_bytes is None
    assert unknown.table().splitlines()[-1] == "fits: unknown (no device_memory_gb)"
    need = unknown.total_bytes / GiB / 0.9
    big = plan_memory(cfg, MESH, rows=8, seq_len=64, device_memory_gb=need * 1.01)
    small = plan_memory(cfg, MESH, rows=8, seq_len=64, device_memory_gb=need * 0.99)
    assert big.fits is True and small.fits is False
    assert big.table().splitlines()[-1].startswith("fits: yes (")
    assert plan_memory(cfg, MESH, rows=8, seq_len=64, device_memory_gb=need * 0.99, headroom=1.0).fits is True


@pytest.mark.parametrize("mesh_arg, kwargs, match", [
    ({"fsdp": 2, "pipeline": 2}, {}, "pipeline"),
    ({"fsdp": 0}, {}, "'fsdp' has size 0"),
    ({"context": 0}, {}, "'context' has size 0"),
    ({"tensor": -1}, {}, "'tensor'"),
    (MESH, {"rows": 0}, "rows=0"),
    (MESH, {"seq_len": 0}, "seq_len=0"),
    (MESH, {"optimizer_dtype": "int8"}, "optimizer_dtype"),
    (MESH, {"headroom": 0}, "headroom"),
])
def test_bad_arguments(mesh_arg, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_memory(ringjax.preset("tiny-v2"), mesh_arg, **{"rows": 8, "seq_len": 32, **kwargs})


def test_non_dividing_mesh_fails_like_create_model():
    cfg = ringjax.preset("tiny-v2")  # 2 kv heads cannot split 4 ways over tensor
    with pytest.raises(ValueError, match=r"wk dim 2 .*'kv_heads'.*\('tensor',\) of size 4") as planned:
        plan_memory(cfg, {"fsdp": 2, "tensor": 4}, rows=8, seq_len=32)
    with pytest.raises(ValueError) as created:
        ringjax.create_model(cfg, ringjax.make_mesh(fsdp=2, tensor=4))
    assert str(planned.value) == str(created.value)
    with pytest.raises(ValueError, match=r"dense_layers/wk dim 2 .*of size 16"):  # Ring-1T has 8 kv heads
        plan_memory(ringjax.preset("ring-1t"), {"fsdp": 256, "tensor": 16}, rows=8, seq_len=32)
