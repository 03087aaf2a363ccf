"""Architecture presets: the released Ling / Ring checkpoints and small sizes for tests and benchmarks.

Released values follow the checkpoints' `config.json` (docs/model.md). Ling-flash-2.0 and Ling-1T sizes
not stated in the reports were chosen so the presets reproduce the published parameter counts
(tests/test_presets.py); when starting from a checkpoint, `from_pretrained` reads its own config.json.
Ring models share the architecture of the Ling model they were trained from.
"""

from __future__ import annotations

from collections.abc import Callable

from ringjax.model.config import V1, V2, LingConfig, RopeScaling


def ling_lite() -> LingConfig:
    """Ling-lite / Ling-lite-1.5 / Ring-lite: 16.80B total, 2.75B active."""
    return LingConfig(
        architecture=V1, vocab_size=126464, hidden_size=2048, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=4, head_dim=128, intermediate_size=5632, moe_intermediate_size=1408, num_experts=64,
        num_experts_per_tok=6, num_shared_experts=2, first_k_dense_replace=0, score_function="softmax",
        norm_topk_prob=True, use_expert_bias=False, n_group=1, topk_group=1, routed_scaling_factor=1.0,
        use_qk_norm=False, rope_theta=600000.0, partial_rotary_factor=1.0, max_position_embeddings=32768,
        rms_norm_eps=1e-6, norm_head=True)


def ling_mini_2() -> LingConfig:
    """Ling-mini-2.0 / Ring-mini-2.0: 16.26B total, 1.43B active (MTP layer not counted)."""
    return LingConfig(
        architecture=V2, vocab_size=157184, hidden_size=2048, num_hidden_layers=20, num_attention_heads=16,
        num_key_value_heads=4, head_dim=128, intermediate_size=5120, moe_intermediate_size=512, num_experts=256,
        num_experts_per_tok=8, num_shared_experts=1, first_k_dense_replace=1, n_group=8, topk_group=4,
        routed_scaling_factor=2.5, rope_theta=600000.0, partial_rotary_factor=0.5,
        rope_scaling=RopeScaling(factor=4.0, original_max_position_embeddings=32768),
        max_position_embeddings=131072, num_nextn_predict_layers=1)


def ling_flash_2() -> LingConfig:
    """Ling-flash-2.0: ~100B total, 6.1B active."""
    return ling_mini_2().replace(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                 intermediate_size=9216, moe_intermediate_size=1024)


def ling_1t() -> LingConfig:
    """Ling-1T / Ring-1T: ~1T total, ~50B active."""
    return ling_mini_2().replace(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                                 num_key_value_heads=8, intermediate_size=18432, moe_intermediate_size=2048,
                                 first_k_dense_replace=4)


def tiny_v1() -> LingConfig:
    """A few-MB Ling 1.0 for tests: one dense layer, softmax routing, shared experts, norm_head."""
    return ling_lite().replace(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, intermediate_size=96, moe_intermediate_size=32,
                               num_experts=8, num_experts_per_tok=2, num_shared_experts=2, first_k_dense_replace=1,
                               max_position_embeddings=512)


def tiny_v2() -> LingConfig:
    """A few-MB Ling 2.0 for tests: group-limited sigmoid routing, QK-norm, partial RoPE + YaRN, MTP."""
    return ling_mini_2().replace(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, intermediate_size=96, moe_intermediate_size=32,
                                 num_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                                 rope_scaling=RopeScaling(factor=4.0, original_max_position_embeddings=128),
                                 max_position_embeddings=512)


def _bench(**sizes) -> LingConfig:
    # docs/benchmarks.md sizes: all layers MoE, no shared expert, full RoPE, scaling 1.0, untied embeddings.
    return ling_mini_2().replace(first_k_dense_replace=0, num_shared_experts=0, partial_rotary_factor=1.0,
                                 routed_scaling_factor=1.0, n_group=1, topk_group=1, rope_scaling=None,
                                 num_nextn_predict_layers=0, num_experts=16, num_experts_per_tok=2,
                                 num_key_value_heads=2, num_attention_heads=8, max_position_embeddings=4096,
                                 rope_theta=10000.0, **sizes)


def bench_tiny() -> LingConfig:
    """~9.1M parameters (docs/benchmarks.md 'tiny')."""
    return _bench(vocab_size=4096, hidden_size=256, num_hidden_layers=4, head_dim=32, moe_intermediate_size=128)


def bench_100m() -> LingConfig:
    """~97.6M parameters (docs/benchmarks.md '100m')."""
    return _bench(vocab_size=16384, hidden_size=512, num_hidden_layers=8, head_dim=64, moe_intermediate_size=384)


PRESETS: dict[str, Callable[[], LingConfig]] = {
    "ling-lite": ling_lite, "ring-lite": ling_lite,
    "ling-mini-2.0": ling_mini_2, "ring-mini-2.0": ling_mini_2,
    "ling-flash-2.0": ling_flash_2,
    "ling-1t": ling_1t, "ring-1t": ling_1t,
    "tiny-v1": tiny_v1, "tiny-v2": tiny_v2,
    "bench-tiny": bench_tiny, "bench-100m": bench_100m,
}


def preset(name: str, **overrides) -> LingConfig:
    """Looks up a preset by name (case-insensitive) and applies `LingConfig.replace` overrides."""
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    cfg = PRESETS[key]()
    return cfg.replace(**overrides) if overrides else cfg
