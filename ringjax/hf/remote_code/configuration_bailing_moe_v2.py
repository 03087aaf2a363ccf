"""Ling 2.0 (`BailingMoeV2ForCausalLM`) configuration, for `auto_map` in exported checkpoints.

Self-contained: needs only `transformers` (works with 4.x and 5.x; SGLang's own
`sglang.srt.configs.bailing_moe_v2.BailingMoeV2Config` is not required). Copied verbatim next to an exported
`config.json` that says `"auto_map": {"AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config"}`.

Defaults are the published Ling-mini-2.0 values (SGLang's class defaults differ: use_bias=True,
moe_router_enable_expert_bias=False, no score_function; exports write every key explicitly, so only configs that
omit keys see these defaults). Two keys are normalised for SGLang 0.5.23, which reads them with `hasattr`:
- `moe_shared_expert_intermediate_size` is always set (to `moe_intermediate_size` when missing, as the Ling 2.0
  reference code sizes the shared expert), never left as None.
- `partial_rotary_factor` is always set; when `config.json` has only `rotary_dim`, it is `rotary_dim / head_dim`;
  when both are given they must agree.
"""

from transformers import PretrainedConfig


class BailingMoeV2Config(PretrainedConfig):
    model_type = "bailing_moe_v2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=157184,
        hidden_size=2048,
        intermediate_size=5120,
        num_hidden_layers=20,
        num_attention_heads=16,
        num_key_value_heads=4,
        hidden_act="silu",
        use_qkv_bias=False,
        use_bias=False,
        use_qk_norm=True,
        use_rmsnorm=True,
        rms_norm_eps=1e-6,
        norm_head=False,
        tie_word_embeddings=False,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        output_dropout=0.0,
        initializer_range=0.02,
        max_position_embeddings=32768,
        rope_theta=600000.0,
        rope_scaling=None,
        partial_rotary_factor=None,
        rotary_dim=None,
        use_cache=True,
        max_window_layers=20,
        pad_token_id=156892,
        eos_token_id=156892,
        num_experts=256,
        num_shared_experts=1,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        norm_topk_prob=True,
        moe_intermediate_size=512,
        moe_shared_expert_intermediate_size=None,
        first_k_dense_replace=1,
        head_dim=None,
        num_nextn_predict_layers=0,
        mtp_loss_scaling_factor=0.0,
        output_router_logits=False,
        router_dtype=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_bias = use_bias
        self.use_qk_norm = use_qk_norm
        self.use_rmsnorm = use_rmsnorm
        self.rms_norm_eps = rms_norm_eps
        self.norm_head = norm_head
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.output_dropout = output_dropout
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.head_dim = head_dim or hidden_size // num_attention_heads
        if partial_rotary_factor is None:
            partial_rotary_factor = rotary_dim / self.head_dim if rotary_dim else 0.5
        elif rotary_dim and abs(rotary_dim - self.head_dim * partial_rotary_factor) > 1e-6:
            raise ValueError(f"rotary_dim={rotary_dim} disagrees with partial_rotary_factor={partial_rotary_factor} "
                             f"(head_dim {self.head_dim})")
        self.partial_rotary_factor = partial_rotary_factor
        if rotary_dim is not None:
            self.rotary_dim = rotary_dim
        self.rope_scaling = rope_scaling  # transformers 5 keeps it as `rope_parameters` (with rope_theta)
        self.use_cache = use_cache
        self.max_window_layers = max_window_layers
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.score_function = score_function
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.norm_topk_prob = norm_topk_prob
        self.moe_intermediate_size = moe_intermediate_size
        self.moe_shared_expert_intermediate_size = (
            moe_shared_expert_intermediate_size if moe_shared_expert_intermediate_size is not None
            else moe_intermediate_size)
        self.first_k_dense_replace = first_k_dense_replace
        self.num_nextn_predict_layers = num_nextn_predict_layers
        self.mtp_loss_scaling_factor = mtp_loss_scaling_factor
        self.output_router_logits = output_router_logits
        self.router_dtype = router_dtype
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


__all__ = ["BailingMoeV2Config"]
