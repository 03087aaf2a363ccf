"""`config.json` <-> `LingConfig`.

Import is strict: a key that changes the architecture and that ringjax does not model is an error
(an unsupported `architectures`, `use_bias: true`, a non-SiLU activation, an unknown key), so a
checkpoint is never silently run with the wrong math. Keys that do not affect the forward pass
(token ids, dropout, dtype, versions) are carried through `LingConfig.hf_extra` and written back on
export. Export writes what SGLang 0.5.23 and vLLM need to build the same model:
explicit `use_bias: false`, `moe_router_enable_expert_bias`, both shared-expert width keys,
`use_rmsnorm: true` on v2, and `auto_map` pointing at the configuration modules in remote_code/.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ringjax.model.config import V1, V2, LingConfig, RopeScaling

MODEL_TYPE = {V1: "bailing_moe", V2: "bailing_moe_v2"}
CONFIG_MODULE = {V1: "configuration_bailing_moe", V2: "configuration_bailing_moe_v2"}
CONFIG_CLASS = {V1: "BailingMoeConfig", V2: "BailingMoeV2Config"}

# HF key -> LingConfig field, where the names are equal.
SAME = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "moe_intermediate_size", "moe_shared_expert_intermediate_size", "num_experts",
        "num_experts_per_tok", "num_shared_experts", "first_k_dense_replace", "score_function", "norm_topk_prob",
        "n_group", "topk_group", "routed_scaling_factor", "use_qk_norm", "use_qkv_bias", "rope_theta",
        "partial_rotary_factor", "max_position_embeddings", "rms_norm_eps", "norm_head", "tie_word_embeddings",
        "num_nextn_predict_layers")
# Keys ringjax converts or checks rather than copying one to one (see from_hf_config).
MAPPED_OR_CHECKED = ("architectures", "model_type", "auto_map", "moe_router_enable_expert_bias", "rope_scaling",
                     "rotary_dim", "use_bias", "hidden_act", "use_rmsnorm")
# Keys that do not change the forward pass; carried through unchanged.
PASSTHROUGH = ("torch_dtype", "dtype", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id",
               "initializer_range", "attention_dropout", "embedding_dropout", "output_dropout", "use_cache",
               "output_router_logits", "router_dtype", "mtp_loss_scaling_factor", "max_window_layers",
               "use_sliding_window", "sliding_window", "_name_or_path", "moe_layer_freq",
               "using_split_qkv_in_self_attention",
               "multi_gate", "use_interleaved_frame_timestamp", "z_loss_weight", "moe_router_topk_scaling_factor",
               "layer_group_size", "group_norm_size", "num_layers_in_first_pipeline_stage", "rope_parameters",
               "keys_to_ignore_at_inference", "norm_softmax", "moe_shared_expert_overlap")

# Defaults of fields a checkpoint may omit, per architecture (the reference code's defaults).
V1_DEFAULTS = dict(score_function="softmax", use_expert_bias=False, n_group=1, topk_group=1, routed_scaling_factor=1.0,
                   use_qk_norm=False, partial_rotary_factor=1.0, first_k_dense_replace=0, norm_head=False,
                   num_nextn_predict_layers=0, rope_scaling=None)
V2_DEFAULTS = dict(score_function="sigmoid", use_expert_bias=True, norm_head=False, num_nextn_predict_layers=0,
                   rope_scaling=None)


def _rope_scaling(raw: dict[str, Any] | None) -> RopeScaling | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "yarn":
        raise ValueError(f"config.json rope_scaling type {kind!r} is not supported (only 'yarn')")
    allowed = {"type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
               "mscale_all_dim"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"config.json rope_scaling has unsupported key(s) {unknown}")
    kw = {k: raw[k] for k in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
                              "mscale_all_dim") if raw.get(k) is not None}
    return RopeScaling(**kw)


def from_hf_config(hf: dict[str, Any], strict: bool = True, **compute) -> LingConfig:
    """Builds a LingConfig from a parsed config.json; `compute` sets ComputeConfig fields."""
    archs = hf.get("architectures") or []
    if len(archs) != 1 or archs[0] not in (V1, V2):
        raise ValueError(f"config.json architectures={archs!r} is not supported; expected [{V1!r}] or [{V2!r}]")
    arch = archs[0]
    if hf.get("use_bias"):
        raise ValueError("config.json use_bias=true (biases on dense/MLP projections) is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
    unknown = sorted(set(hf) - set(SAME) - set(MAPPED_OR_CHECKED) - set(PASSTHROUGH))
    if unknown and strict:
        raise ValueError(f"config.json has key(s) ringjax does not know: {unknown}. If they do not change the "
                         f"architecture, load with strict=False")
    values: dict[str, Any] = dict(V1_DEFAULTS if arch == V1 else V2_DEFAULTS)
    values.update({k: hf[k] for k in SAME if hf.get(k) is not None})
    values["architecture"] = arch
    if "head_dim" not in values:
        values["head_dim"] = hf["hidden_size"] // hf["num_attention_heads"]
    if "moe_router_enable_expert_bias" in hf:
        values["use_expert_bias"] = bool(hf["moe_router_enable_expert_bias"])
    if hf.get("rotary_dim") is not None:
        factor = hf["rotary_dim"] / values["head_dim"]
        if "partial_rotary_factor" in hf and abs(hf["partial_rotary_factor"] - factor) > 1e-9:
            raise ValueError(f"config.json rotary_dim={hf['rotary_dim']} disagrees with partial_rotary_factor="
                             f"{hf['partial_rotary_factor']} (head_dim {values['head_dim']})")
        values["partial_rotary_factor"] = factor
    values["rope_scaling"] = _rope_scaling(hf.get("rope_scaling"))
    extra = {k: v for k, v in hf.items() if k in PASSTHROUGH or k in unknown}
    values["hf_extra"] = tuple(sorted((k, json.dumps(v)) for k, v in extra.items()))
    cfg = LingConfig.from_dict(values)
    return cfg.replace(compute=compute) if compute else cfg


def to_hf_config(cfg: LingConfig, torch_dtype: str | None = None) -> dict[str, Any]:
    """The config.json of an export; keeps every passthrough key of the source checkpoint."""
    out: dict[str, Any] = {k: json.loads(v) for k, v in cfg.hf_extra}
    arch = cfg.architecture
    out.update({
        "architectures": [arch],
        "model_type": MODEL_TYPE[arch],
        "auto_map": {"AutoConfig": f"{CONFIG_MODULE[arch]}.{CONFIG_CLASS[arch]}"},
        "hidden_act": "silu",
        "use_bias": False,
        "moe_router_enable_expert_bias": cfg.use_expert_bias,
        "rope_scaling": None if cfg.rope_scaling is None else {
            k: v for k, v in dataclasses.asdict(cfg.rope_scaling).items() if k != "type"} | {"type": "yarn"},
    })
    for key in SAME:
        out[key] = getattr(cfg, key)
    out["moe_shared_expert_intermediate_size"] = cfg.moe_shared_expert_intermediate_size or cfg.moe_intermediate_size
    if arch == V2:
        out["rotary_dim"] = cfg.rotary_dim
        out["use_rmsnorm"] = True
    if torch_dtype is not None:
        out["torch_dtype"] = torch_dtype
    return out
