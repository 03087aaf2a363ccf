"""LingConfig validation: unknown keys and bad values fail early, naming the offending field."""

import dataclasses

import pytest

import ringjax
from ringjax.model import PRESETS, ComputeConfig, LingConfig, RopeScaling


def _cfg(**changes):
    return dataclasses.asdict(ringjax.preset("tiny-v2")) | changes


def test_from_dict_round_trip():
    cfg = ringjax.preset("tiny-v2")
    assert LingConfig.from_dict(cfg.to_dict()) == cfg
    cfg1 = ringjax.preset("tiny-v1")
    assert LingConfig.from_dict(cfg1.to_dict()) == cfg1


@pytest.mark.parametrize("build", [
    lambda: LingConfig.from_dict({"hidden_size": 64, "hiden_layers": 2}),
    lambda: ringjax.preset("tiny-v1").replace(hiden_layers=2),
    lambda: ringjax.preset("tiny-v1", hiden_layers=2),
])
def test_unknown_key_named(build):
    with pytest.raises(ValueError, match="hiden_layers"):
        build()


@pytest.mark.parametrize("build", [
    lambda: LingConfig.from_dict({"compute": {"dtype": "float32", "remat_policy": "full"}}),
    lambda: ringjax.preset("tiny-v1").replace(compute={"remat_policy": "full"}),
    lambda: ringjax.preset("tiny-v1").replace(**{"compute.remat_policy": "full"}),
])
def test_unknown_compute_key_named(build):
    with pytest.raises(ValueError, match="remat_policy"):
        build()


def test_unknown_rope_scaling_key_named():
    with pytest.raises(ValueError, match="beta_medium"):
        LingConfig.from_dict({"rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 128,
                                               "beta_medium": 3.0}})


@pytest.mark.parametrize("changes, field", [
    ({"num_attention_heads": 6, "num_key_value_heads": 4}, "num_attention_heads"),
    ({"topk_group": 5, "n_group": 4}, "topk_group"),
    ({"topk_group": 0}, "topk_group"),
    ({"n_group": 3}, "n_group"),
    ({"partial_rotary_factor": 0.0625 * 3}, "partial_rotary_factor"),  # rotary_dim 3: odd
    ({"partial_rotary_factor": 2.0}, "partial_rotary_factor"),  # rotary_dim > head_dim
    ({"architecture": "LlamaForCausalLM"}, "architecture"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"first_k_dense_replace": 4}, "first_k_dense_replace"),
    ({"score_function": "relu"}, "score_function"),
    ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
    ({"compute": {"dtype": "float64"}}, "compute.dtype"),
    ({"compute": {"param_dtype": "int8"}}, "compute.param_dtype"),
    ({"compute": {"moe": "sparse"}}, "compute.moe"),
    ({"compute": {"attention": "flash2"}}, "compute.attention"),
    ({"compute": {"remat": "some"}}, "compute.remat"),
    ({"compute": {"logprob_chunk": 0}}, "compute.logprob_chunk"),
])
def test_bad_value_names_field(changes, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        LingConfig.from_dict(_cfg(**changes))
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ringjax.preset("tiny-v2").replace(**changes)


def test_odd_rotary_dim_rejected():
    # head_dim 16 * 0.3 -> int 4 is valid; 16 * 0.1875 = 3 is odd and must be rejected
    assert ringjax.preset("tiny-v2", partial_rotary_factor=0.3).rotary_dim == 4
    with pytest.raises(ValueError, match="rotary_dim=3"):
        ringjax.preset("tiny-v2", partial_rotary_factor=0.1875)


def test_compute_config_direct():
    with pytest.raises(ValueError, match="compute.dtype"):
        ComputeConfig(dtype="float64")
    assert ComputeConfig(dtype="bfloat16").dtype == "bfloat16"


def test_bad_rope_scaling():
    with pytest.raises(ValueError, match="factor"):
        RopeScaling(factor=0.5, original_max_position_embeddings=128)
    with pytest.raises(ValueError, match="type"):
        RopeScaling(factor=2.0, original_max_position_embeddings=128, type="linear")


def test_replace_nested_compute_keeps_other_fields():
    cfg = ringjax.preset("tiny-v1").replace(compute={"remat": "full"}, **{"compute.moe": "dense"})
    assert cfg.compute.remat == "full" and cfg.compute.moe == "dense"
    assert cfg.compute.dtype == "float32" and cfg.architecture == ringjax.V1


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError) as err:
        ringjax.preset("ling-huge")
    assert "ling-huge" in str(err.value)
    for name in PRESETS:
        assert name in str(err.value)


def test_preset_case_insensitive_and_frozen():
    cfg = ringjax.preset("Ling-Lite")
    assert cfg == ringjax.preset("ling-lite")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 3


def test_presets_valid_and_architectures():
    for name in PRESETS:
        cfg = ringjax.preset(name)
        assert cfg.version == (1 if cfg.architecture == ringjax.V1 else 2)
    assert ringjax.preset("ling-lite").version == 1 and ringjax.preset("ling-1t").version == 2
    assert ringjax.preset("ling-1t").rotary_dim == 64
