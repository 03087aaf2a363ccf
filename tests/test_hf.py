"""Hugging Face I/O: bit-exact round trips (unsharded and sharded), MTP layers dropped or kept on export, and clear
errors on bad checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import ringjax
from ringjax.cli import main
from ringjax.hf import from_hf_config, from_pretrained, save_pretrained, to_hf_config
from ringjax.hf.load import INDEX


def _flat(model):
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model))}


def _assert_same(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


def _randomize(model, seed=0):
    """Non-trivial values everywhere (norms, biases too), so a swapped tensor cannot go unnoticed."""
    state = nnx.state(model)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


@pytest.fixture(params=["tiny-v1", "tiny-v2"])
def model(request):
    return _randomize(ringjax.create_model(ringjax.preset(request.param), seed=1))


def test_round_trip_bit_exact(model, tmp_path):
    path = save_pretrained(model, str(tmp_path / "hf"), max_shard_size="100KB", mtp="keep")  # every parameter
    files = sorted(os.listdir(path))
    assert INDEX in files and "config.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 1  # really sharded
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert cfg["architectures"] == [model.config.architecture]
    assert cfg["use_bias"] is False and cfg["use_qkv_bias"] is False
    module = cfg["auto_map"]["AutoConfig"].split(".")[0] + ".py"
    assert module in files
    reloaded = from_pretrained(path)
    _assert_same(model, reloaded)
    # export of the import is byte-identical tensor by tensor
    again = save_pretrained(reloaded, str(tmp_path / "hf2"), max_shard_size="100KB", mtp="keep")
    t1 = {k: v for f in files if f.endswith(".safetensors") for k, v in load_file(os.path.join(path, f)).items()}
    t2 = {k: v for f in os.listdir(again) if f.endswith(".safetensors")
          for k, v in load_file(os.path.join(again, f)).items()}
    assert t1.keys() == t2.keys()
    for k in t1:
        assert t1[k].dtype == t2[k].dtype and t1[k].tobytes() == t2[k].tobytes(), k


def test_sharded_load_equals_unsharded(model, tmp_path):
    path = save_pretrained(model, str(tmp_path / "hf"), mtp="keep")
    mesh = ringjax.make_mesh(fsdp=2, expert=2, tensor=2)
    sharded = from_pretrained(path, mesh)
    _assert_same(model, sharded)
    wg = nnx.state(sharded)["moe_layers"]["wg"][...]
    assert "expert" in str(wg.sharding.spec) and not wg.sharding.is_fully_replicated
    assert len(wg.addressable_shards) == 8 and wg.addressable_shards[0].data.size == wg.size // 8


def test_bf16_export_and_reload(model, tmp_path):
    path = save_pretrained(model, str(tmp_path / "hf"), dtype="bfloat16")
    assert json.load(open(os.path.join(path, "config.json")))["torch_dtype"] == "bfloat16"
    reloaded = from_pretrained(path)
    assert reloaded.config.compute.param_dtype == "bfloat16"
    for k, v in _flat(reloaded).items():
        expect = jnp.float32 if k[-1] == "expert_bias" else jnp.bfloat16
        assert v.dtype == expect, k
    again = save_pretrained(reloaded, str(tmp_path / "hf2"))
    assert json.load(open(os.path.join(again, "config.json")))["torch_dtype"] == "bfloat16"


def _single_file(path):
    tensors = {}
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(path, f)))
            os.remove(os.path.join(path, f))
    os.remove(os.path.join(path, INDEX))
    return tensors


def test_missing_extra_and_misshaped_tensors(tmp_path):
    model = ringjax.create_model(ringjax.preset("tiny-v2"))
    path = save_pretrained(model, str(tmp_path / "hf"), mtp="keep")
    tensors = _single_file(path)

    def check(mutated, match):
        save_file(mutated, os.path.join(path, "model.safetensors"))
        with pytest.raises(ValueError, match=match):
            from_pretrained(path)

    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    check({k: v for k, v in tensors.items() if k != name}, "missing.*experts.3.up_proj")
    check(dict(tensors, **{"model.layers.1.mlp.gate.bias": np.zeros(8, np.float32)}), "mlp.gate.bias")
    check(dict(tensors, **{name: tensors[name][:, :-1].copy()}), r"experts.3.up_proj.weight has shape")
    save_file(tensors, os.path.join(path, "model.safetensors"))
    _assert_same(model, from_pretrained(path))  # the untouched tensors load again


# MTP layer i of a Ling 2.0 checkpoint, as the released checkpoints' converter writes it ("MTP as an extra layer") and
# SGLang's bailing_moe_nextn / vLLM's bailing_moe_mtp read it: model.layers.{num_hidden_layers + i}. + these names
# (its own norms and projection, then one MoE decoder layer's tensors).
MTP_OWN = ("enorm.weight", "hnorm.weight", "eh_proj.weight", "final_layernorm.weight")
MOE_LAYER = ("input_layernorm.weight", "post_attention_layernorm.weight", "attention.query_key_value.weight",
             "attention.query_layernorm.weight", "attention.key_layernorm.weight", "attention.dense.weight",
             "mlp.gate.weight", "mlp.gate.expert_bias", "mlp.shared_experts.gate_proj.weight",
             "mlp.shared_experts.up_proj.weight", "mlp.shared_experts.down_proj.weight")


def _tensors(path):
    return {k: v for f in os.listdir(path) if f.endswith(".safetensors")
            for k, v in load_file(os.path.join(path, f)).items()}


def test_export_drops_mtp_unless_kept(tmp_path, capsys):
    """`ringjax export` writes no MTP layer (num_nextn_predict_layers 0) unless `--mtp keep`; kept, the layer sits
    under the released checkpoints' names, and everything else is the same in both folders."""
    cfg = ringjax.preset("tiny-v2")
    drop, keep = str(tmp_path / "drop"), str(tmp_path / "keep")
    assert main(["export", "preset:tiny-v2", drop]) == 0
    assert main(["export", "preset:tiny-v2", keep, "--mtp", "keep"]) == 0
    t_drop, t_keep = _tensors(drop), _tensors(keep)
    n = cfg.num_hidden_layers  # MTP layer 0 is model.layers.3
    experts = tuple(f"mlp.experts.{e}.{w}_proj.weight" for e in range(cfg.num_experts) for w in ("gate", "up", "down"))
    assert set(t_keep) - set(t_drop) == {f"model.layers.{n}.{name}" for name in MTP_OWN + MOE_LAYER + experts}
    assert set(t_drop) < set(t_keep) and not any(k.startswith(f"model.layers.{n}.") for k in t_drop)
    for k in t_drop:
        np.testing.assert_array_equal(t_drop[k], t_keep[k], err_msg=k)
    # eh_proj is [out, in] = [H, 2H] over cat(enorm(embedding), hnorm(hidden)), as nn.Linear / SGLang / vLLM hold it
    eh = nnx.state(ringjax.create_model(cfg, seed=0))["mtp"]["eh_proj"][...]
    np.testing.assert_array_equal(t_keep[f"model.layers.{n}.eh_proj.weight"], np.asarray(eh[0]).T)
    c_drop, c_keep = (json.load(open(os.path.join(p, "config.json"))) for p in (drop, keep))
    assert c_drop.pop("num_nextn_predict_layers") == 0 and c_keep.pop("num_nextn_predict_layers") == 1
    assert c_drop == c_keep
    with pytest.raises(SystemExit):
        main(["export", "preset:tiny-v2", str(tmp_path / "x"), "--mtp", "maybe"])
    with pytest.raises(ValueError, match="mtp='maybe'"):
        save_pretrained(ringjax.create_model(cfg), str(tmp_path / "x"), mtp="maybe")
    assert not (tmp_path / "x").exists()


def test_dropped_mtp_reloads_as_a_model_without_mtp(tmp_path):
    """from_pretrained builds what the folder holds: without MTP weights in it, no MTP layer (nothing made up);
    every other parameter bit-exact. (A kept export reloads with its MTP layer: test_round_trip_bit_exact.)"""
    model = _randomize(ringjax.create_model(ringjax.preset("tiny-v2"), seed=2))
    dropped = from_pretrained(save_pretrained(model, str(tmp_path / "hf")))
    assert dropped.mtp is None and dropped.config.num_nextn_predict_layers == 0
    want = {k: v for k, v in _flat(model).items() if k[0] != "mtp"}
    got = _flat(dropped)
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))


def test_config_errors():
    good = to_hf_config(ringjax.preset("tiny-v2"))
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        from_hf_config(dict(good, architectures=["LlamaForCausalLM"]))
    with pytest.raises(ValueError, match="use_bias"):
        from_hf_config(dict(good, use_bias=True))
    with pytest.raises(ValueError, match="num_experts_per_tokk"):
        from_hf_config(dict(good, num_experts_per_tokk=3))
    cfg = from_hf_config(dict(good, num_experts_per_tokk=3), strict=False)
    assert ("num_experts_per_tokk", "3") in cfg.hf_extra  # carried through to the export
    with pytest.raises(ValueError, match="rotary_dim"):
        from_hf_config(dict(good, rotary_dim=4))
    assert from_hf_config(good).replace(hf_extra=()) == ringjax.preset("tiny-v2").replace(
        moe_shared_expert_intermediate_size=32)


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model = ringjax.create_model(ringjax.preset("tiny-v1"))
    path = save_pretrained(model, str(tmp_path / "hf"))
    before = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}

    import ringjax.hf.save as save_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(save_mod, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, path, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temporary folders left behind
    assert {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)} == before
    with pytest.raises(FileExistsError):
        save_pretrained(model, path)
