"""Typed configuration of the Ling (Bailing) MoE family.

One frozen dataclass covers both released architectures (docs/model.md):
- Ling 1.0 `BailingMoeForCausalLM`: softmax top-k routing, shared experts, `norm_head`.
- Ling 2.0 `BailingMoeV2ForCausalLM`: sigmoid group-limited routing with a frozen `expert_bias`,
  `routed_scaling_factor`, QK-norm, partial RoPE (+ YaRN), first-k dense layers, optional MTP layers.

`LingConfig` holds only the architecture (what a checkpoint's `config.json` describes). How the
model is computed (dtypes, remat, kernels) lives in `ComputeConfig`, nested under it by owner.
Every value is checked in `__post_init__`, so a bad config fails before any compute.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

V1 = "BailingMoeForCausalLM"
V2 = "BailingMoeV2ForCausalLM"
ARCHITECTURES = (V1, V2)

RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
AttentionImpl = Literal["xla", "cudnn", "flash", "reference"]
MoeImpl = Literal["auto", "ragged_dot", "segment", "gather", "dense"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """YaRN context extension (Ling 2.0 ships `{"type": "yarn", "factor": 4.0, ...}`)."""

    factor: float  # context extension: low frequencies are divided by this (Ling 2.0: 4)
    original_max_position_embeddings: int  # context length before the extension
    beta_fast: float = 32.0  # dims rotating more than this many times over that context keep their frequency
    beta_slow: float = 1.0  # dims rotating fewer times than this are fully interpolated; a linear ramp between
    mscale: float = 1.0  # attention factor m(mscale) / m(mscale_all_dim), m(x) = 0.1 x ln(factor) + 1
    mscale_all_dim: float = 0.0  # 0: the attention factor is m(1) and mscale is unused
    type: Literal["yarn"] = "yarn"  # the only scaling supported

    def __post_init__(self):
        if self.type != "yarn":
            raise ValueError(f"rope_scaling.type={self.type!r}: only 'yarn' is supported")
        if self.factor < 1.0:
            raise ValueError(f"rope_scaling.factor={self.factor} must be >= 1")
        if self.original_max_position_embeddings <= 0:
            raise ValueError("rope_scaling.original_max_position_embeddings must be positive")


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """How the model runs; never part of a checkpoint. Norms, router, softmax and log-probs always run in float32.
    `moe: auto` is `ragged_dot` on TPU; on CPU and GPU, where XLA lowers ragged_dot to a dense all-experts
    product, `segment` (training, prefill) or `gather` (decode); `dense` runs every expert on every token and
    exists only as a test reference."""

    dtype: str = "float32"  # activation / matmul dtype: float32, bfloat16 or float16
    param_dtype: str = "float32"  # storage dtype of the weights
    remat: RematPolicy = "none"  # what one scanned decoder layer recomputes in the backward pass instead of storing
    attention: AttentionImpl = "xla"  # xla (jax.nn.dot_product_attention), cudnn (fused GPU kernel), flash (key
    # blocks with an online softmax in plain JAX: no score block spans the row), reference
    moe: MoeImpl = "auto"  # grouped expert matmul: auto, ragged_dot, segment, gather, dense
    logprob_chunk: int = 1024  # tokens per chunk of the log-prob pass (bounds the float32 logits buffer)
    logprob_vocab_chunk: int = 32768  # vocabulary entries per block of a chunk's online logsumexp (same bound)
    attention_chunk: int = 512  # queries per block of xla / reference attention (bounds the [S, K] scores); flash:
    # queries and keys per block

    def __post_init__(self):
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"compute.{name}={getattr(self, name)!r}: use float32, bfloat16 or float16")
        _check_choice("compute.remat", self.remat, RematPolicy)
        _check_choice("compute.attention", self.attention, AttentionImpl)
        _check_choice("compute.moe", self.moe, MoeImpl)
        for name in ("logprob_chunk", "logprob_vocab_chunk", "attention_chunk"):
            if getattr(self, name) <= 0:
                raise ValueError(f"compute.{name}={getattr(self, name)} must be positive")


@dataclasses.dataclass(frozen=True)
class LingConfig:
    """Architecture of a Ling / Ring checkpoint; field names follow the HF `config.json`."""

    architecture: str = V2  # HF class: BailingMoeForCausalLM (Ling 1.0) or BailingMoeV2ForCausalLM (Ling 2.0)
    vocab_size: int = 157184  # rows of the embedding and of the LM head
    hidden_size: int = 2048  # model width
    num_hidden_layers: int = 20  # decoder layers of the main stack (MTP layers not counted)
    num_attention_heads: int = 16  # query heads
    num_key_value_heads: int = 4  # key / value heads (grouped-query attention; divides the query heads)
    head_dim: int = 128  # width of one attention head
    intermediate_size: int = 5120  # SwiGLU width of the dense MLP of the first first_k_dense_replace layers
    moe_intermediate_size: int = 512  # SwiGLU width of one routed expert
    moe_shared_expert_intermediate_size: int | None = None  # width of one shared expert; None: moe_intermediate_size
    num_experts: int = 256  # routed experts per MoE layer
    num_experts_per_tok: int = 8  # routed experts each token uses (top-k)
    num_shared_experts: int = 1  # experts every token goes through, besides the routed ones
    first_k_dense_replace: int = 1  # leading layers with a dense MLP instead of MoE
    # Routing. v1: softmax (+ norm_topk_prob). v2: sigmoid + expert_bias, group-limited.
    score_function: Literal["softmax", "sigmoid"] = "sigmoid"  # router scores: softmax (Ling 1.0), sigmoid (2.0)
    norm_topk_prob: bool = True  # renormalise the chosen experts' weights to sum 1
    use_expert_bias: bool = True  # sigmoid routing: choose experts by score + a frozen per-expert bias
    n_group: int = 8  # expert groups of group-limited routing (1: no groups)
    topk_group: int = 4  # groups a token may take experts from (ranked by their two best scores)
    routed_scaling_factor: float = 2.5  # multiplies the routed experts' weights after renormalisation
    # Attention.
    use_qk_norm: bool = True  # per-head RMSNorm on queries and keys before RoPE (Ling 2.0)
    use_qkv_bias: bool = False  # bias on the fused query_key_value projection
    rope_theta: float = 600000.0  # RoPE base frequency
    partial_rotary_factor: float = 0.5  # share of head_dim that RoPE rotates (Ling 2.0: 0.5)
    rope_scaling: RopeScaling | None = None  # YaRN context extension; None: plain RoPE
    max_position_embeddings: int = 32768  # longest context (prompt + response) the model and KV cache accept
    # Norms, head, extras.
    rms_norm_eps: float = 1e-6  # epsilon of every RMSNorm
    norm_head: bool = False  # L2-normalise the LM head over the vocabulary axis at use time (Ling 1.0)
    tie_word_embeddings: bool = False  # the LM head is the embedding matrix
    num_nextn_predict_layers: int = 0  # multi-token-prediction layers after the stack (not trained; exported if asked)
    hf_extra: tuple[tuple[str, str], ...] = ()  # token ids and other config.json keys the math ignores, re-exported
    compute: ComputeConfig = dataclasses.field(default_factory=ComputeConfig)  # how it runs (dtypes, remat, kernels)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r} is not supported; expected one of {ARCHITECTURES}")
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "head_dim", "num_experts", "num_experts_per_tok", "moe_intermediate_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ValueError(f"first_k_dense_replace={self.first_k_dense_replace} must lie in "
                             f"[0, num_hidden_layers={self.num_hidden_layers}]")
        if self.first_k_dense_replace and self.intermediate_size <= 0:
            raise ValueError("intermediate_size must be positive when first_k_dense_replace > 0")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} > num_experts={self.num_experts}")
        _check_choice("score_function", self.score_function, Literal["softmax", "sigmoid"])
        if self.n_group <= 0 or self.num_experts % self.n_group:
            raise ValueError(f"n_group={self.n_group} must divide num_experts={self.num_experts}")
        if not 0 < self.topk_group <= self.n_group:
            raise ValueError(f"topk_group={self.topk_group} must lie in [1, n_group={self.n_group}]")
        per_group = self.num_experts // self.n_group
        if self.n_group > 1 and self.topk_group * per_group < self.num_experts_per_tok:
            raise ValueError(f"topk_group={self.topk_group} groups of {per_group} experts cannot hold "
                             f"num_experts_per_tok={self.num_experts_per_tok}")
        if self.n_group > 1 and per_group < 2:
            raise ValueError(f"group-limited routing needs >= 2 experts per group, got {per_group}")
        if self.rotary_dim <= 0 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ValueError(f"partial_rotary_factor={self.partial_rotary_factor} gives rotary_dim={self.rotary_dim}; "
                             f"it must be even and in (0, head_dim={self.head_dim}]")
        if self.num_shared_experts < 0 or self.num_nextn_predict_layers < 0:
            raise ValueError("num_shared_experts and num_nextn_predict_layers must be >= 0")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps={self.rms_norm_eps} must be positive")
        if isinstance(self.rope_scaling, dict):
            raise TypeError("rope_scaling must be a RopeScaling, not a dict (use LingConfig.from_dict)")

    # Derived sizes -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return 1 if self.architecture == V1 else 2

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def shared_intermediate_size(self) -> int:
        width = self.moe_shared_expert_intermediate_size or self.moe_intermediate_size
        return width * self.num_shared_experts

    @property
    def num_dense_layers(self) -> int:
        return self.first_k_dense_replace

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    def replace(self, **changes: Any) -> LingConfig:
        """`dataclasses.replace` that also accepts `compute=dict(...)` and dotted `compute.x` keys."""
        compute = dict(changes.pop("compute", None) or {})
        for key in [k for k in changes if k.startswith("compute.")]:
            compute[key.split(".", 1)[1]] = changes.pop(key)
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown LingConfig field(s): {sorted(unknown)}")
        if isinstance(changes.get("rope_scaling"), dict):
            changes["rope_scaling"] = RopeScaling(**changes["rope_scaling"])
        if compute:
            _check_keys("compute", compute, ComputeConfig)
            changes["compute"] = dataclasses.replace(self.compute, **compute)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LingConfig:
        """Builds a config from plain values (YAML overrides); unknown keys are errors."""
        values = dict(values)
        _check_keys("LingConfig", values, cls)
        if isinstance(values.get("compute"), dict):
            _check_keys("compute", values["compute"], ComputeConfig)
            values["compute"] = ComputeConfig(**values["compute"])
        if isinstance(values.get("rope_scaling"), dict):
            _check_keys("rope_scaling", values["rope_scaling"], RopeScaling)
            values["rope_scaling"] = RopeScaling(**values["rope_scaling"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_keys(owner: str, values: dict[str, Any], cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {owner} key(s) {unknown}; known keys: {sorted(known)}")


def _check_choice(name: str, value: Any, choices: Any) -> None:
    allowed = choices.__args__
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {allowed}")
