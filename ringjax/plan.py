"""Per-device memory of training a Ling model on a named mesh, from shapes alone (`ringjax plan CONFIG`).

Nothing is allocated and no devices are needed: the model is built with `abstract_model` (eval_shape) and its
variables are laid out by the project's own rules, `ringjax.sharding.state_shardings` on a
`jax.sharding.AbstractMesh`, so a mesh that does not divide a parameter fails with the same error as
`create_model`. Parameter, gradient and optimizer sizes are exact per-device shard sizes; activations and the
log-prob working set are estimates (`activation_bytes`, `logits_bytes`). With a `context` axis a device holds
1/context of each of its rows' tokens, plus the keys and values of whole rows that attention gathers.
`plan_pipeline` plans every training phase of a pipeline config (SFT and each RL stage) with its micro-batch shape
and rollout KV cache.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import jax
from flax import nnx

from ringjax.model import LingConfig, abstract_model, count_params
from ringjax.model.logprobs import vocab_blocks
from ringjax.sharding import MESH_AXES, batch_shards, check_context, resolve_mesh_sizes, state_shardings
from ringjax.trainer.state import split_model

if TYPE_CHECKING:
    from ringjax.pipeline.config import PipelineConfig

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SIZES = ("param_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes", "attention_bytes", "logits_bytes",
          "kv_cache_bytes", "total_bytes", "device_memory_bytes")
_STACKS = ("dense_layers", "moe_layers")


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device; `fits` compares `total_bytes` with `headroom * device_memory_bytes`."""

    mesh: dict[str, int]
    devices: int
    params_total: int
    params_active: int
    param_bytes: int  # trainable + frozen, each in its own dtype (compute.param_dtype; ExpertBias float32)
    grad_bytes: int  # float32 accumulator of the trainable params
    optimizer_bytes: int  # AdamW mu + nu of the trainable params
    activation_bytes: int
    attention_bytes: int  # one attention block's scores (or mask), the largest transient of a layer
    logits_bytes: int
    kv_cache_bytes: int  # rollout engine KV cache when it shares the trainer's devices (0: engine elsewhere)
    total_bytes: int
    device_memory_bytes: int | None
    fits: bool | None
    largest_params: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (name, global shape, shard shape)
    headroom: float = 0.9

    def as_dict(self) -> dict:
        """JSON-able fields, plus every `*_bytes` size as `*_gib` (2 decimals)."""
        out = dataclasses.asdict(self)
        out["largest_params"] = [{"name": n, "shape": list(s), "shard_shape": list(d)}
                                 for n, s, d in self.largest_params]
        for key in _SIZES:
            value = getattr(self, key)
            out[key.replace("_bytes", "_gib")] = None if value is None else round(value / GiB, 2)
        return out

    def table(self) -> str:
        """One line per item in GiB, ending with the `fits:` verdict."""
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        lines = [f"mesh: {mesh} ({self.devices} devices)",
                 f"params: {_count(self.params_total)} total, {_count(self.params_active)} active"]
        for label, key in (("parameters", "param_bytes"), ("gradients", "grad_bytes"),
                           ("optimizer", "optimizer_bytes"), ("activations (est.)", "activation_bytes"),
                           ("attention (est.)", "attention_bytes"),
                           ("log-probs (est.)", "logits_bytes"), ("rollout KV cache", "kv_cache_bytes"),
                           ("total", "total_bytes")):
            lines.append(f"{label + ':':<20}{getattr(self, key) / GiB:10.2f} GiB")
        lines.append("largest parameters per device:")
        for name, shape, shard in self.largest_params:
            lines.append(f"  {name} {shape} -> {shard}")
        if self.device_memory_bytes is None:
            lines.append("fits: unknown (no device_memory_gb)")
        else:
            usable = self.headroom * self.device_memory_bytes / GiB
            lines.append(f"fits: {'yes' if self.fits else 'no'} ({self.total_bytes / GiB:.2f} of {usable:.2f} GiB)")
        return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def mesh_sizes(mesh: Mapping[str, int]) -> dict[str, int]:
    """All five mesh axes (missing ones 1); ValueError for an unknown axis or a non-positive size."""
    unknown = sorted(set(mesh) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axis name(s) {unknown}; expected {MESH_AXES}")
    sizes = {a: mesh.get(a, 1) for a in MESH_AXES}
    for axis, size in sizes.items():
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"mesh axis {axis!r} has size {size!r}; sizes must be positive integers")
    return sizes


class _Shard(NamedTuple):
    name: str  # "moe_layers/wg"
    shape: tuple[int, ...]  # global
    shard: tuple[int, ...]  # per device
    itemsize: int
    spec: tuple  # PartitionSpec entries, one per dimension

    @property
    def size(self) -> int:
        return math.prod(self.shard)


def _shards(state: nnx.State, mesh: jax.sharding.AbstractMesh) -> list[_Shard]:
    """Per-device layout of every variable, by `state_shardings` (which checks divisibility)."""
    out = []
    flat_shardings = dict(nnx.to_flat_state(state_shardings(state, mesh)))
    for path, variable in nnx.to_flat_state(state):
        spec = tuple(flat_shardings[path].spec) + (None,) * variable.ndim
        shard = []
        for size, part in zip(variable.shape, spec):
            parts = (part,) if isinstance(part, str) else (part or ())
            shard.append(-(-size // math.prod(mesh.shape[a] for a in parts)))
        itemsize = jax.numpy.dtype(variable.get_value().dtype).itemsize
        out.append(_Shard("/".join(map(str, path)), tuple(variable.shape), tuple(shard), itemsize, spec))
    return out


def activation_bytes(cfg: LingConfig, tokens: int, tensor: int, layer_weights: int, row_tokens: int = 0) -> int:
    """Estimated bytes of one micro-batch's forward + backward activations on one device (not a measurement).

    `tokens`: the device's own tokens (rows per device x seq_len / context). `row_tokens`: with context
    parallelism (context > 1), the whole rows' tokens of those rows (rows per device x seq_len); 0 without.

    Per token and decoder layer, with h = hidden_size, t = tensor size, b = bytes of compute.dtype:
    - remat "none": (10 + 24 / t) * h * b / 2 (Korthikanti et al. 2022, "Reducing activation recomputation",
      16-bit bytes per token per layer with tensor parallelism, without the 5as/h attention-score term: scores
      are never materialised by a fused attention), plus 3 * top_k * moe_intermediate_size / t * b per MoE
      layer for the routed experts' gate, up and product;
    - "full": h * b (only the layer input is saved);
    - "dots", "dots_no_batch": the mean of the two.
    Plus the working set of one layer's backward: its "none" activations when rematerialised, and its weights
    gathered over fsdp (`layer_weights` elements per device) in compute.dtype, twice (weights and gradients).
    With context parallelism, attention all-gathers one layer's keys and values of the whole row: with
    g = ceil(num_key_value_heads / t), 2 * row_tokens * g * head_dim * b bytes, held twice in that layer's backward
    (with their gradients). Under remat "none" every layer keeps its gathered K/V for the backward ("dots": half
    of that, as above). The device's own share of K/V is then counted twice (in the per-token terms too): a small
    over-estimate, by 1/context of the gathered set.
    """
    b = DTYPE_BYTES[cfg.compute.dtype]
    dense = (10 + 24 / tensor) * cfg.hidden_size * b / 2
    moe = dense + 3 * cfg.num_experts_per_tok * cfg.moe_intermediate_size / tensor * b
    none = cfg.num_dense_layers * dense + cfg.num_moe_layers * moe
    full = cfg.num_hidden_layers * cfg.hidden_size * b
    saved = {"none": none, "full": full}.get(cfg.compute.remat, (none + full) / 2)
    recompute = 0.0 if cfg.compute.remat == "none" else (moe if cfg.num_moe_layers else dense)
    kv = 2 * row_tokens * -(-cfg.num_key_value_heads // tensor) * cfg.head_dim * b  # one layer's gathered K and V
    kv_saved = {"none": cfg.num_hidden_layers * kv, "full": 0}.get(cfg.compute.remat, cfg.num_hidden_layers * kv / 2)
    return math.ceil(tokens * (saved + recompute) + kv_saved + 2 * kv + 2 * layer_weights * b)


def attention_bytes(cfg: LingConfig, rows: int, local: int, seq_len: int, tensor: int) -> int:
    """Estimated bytes of one attention block's working set on one device (not a measurement): the largest
    transient of a layer's forward or rematerialised backward, sized by the whole row, not the device's share.

    Queries run in blocks of q = min(compute.attention_chunk, local) against all `seq_len` keys of the row
    (`local`: the device's share of a row, seq_len / context). `xla` / `reference` hold the [rows, heads / t, q,
    seq_len] float32 scores three times (scores, probabilities, their gradient) plus the [rows, q, seq_len] boolean
    mask; a long row needs a small `compute.attention_chunk`. `flash` walks the keys in blocks of the same size:
    the same terms with min(chunk, seq_len) keys instead of the row. `cudnn` never builds the scores and takes the
    whole share at once: only its [rows, local, seq_len] mask (1 byte each)."""
    heads = -(-cfg.num_attention_heads // tensor)
    if cfg.compute.attention == "cudnn":
        return rows * local * seq_len
    q = min(cfg.compute.attention_chunk, local)
    keys = min(cfg.compute.attention_chunk, seq_len) if cfg.compute.attention == "flash" else seq_len
    return rows * q * keys * (3 * heads * 4 + 1)


def plan_memory(model_cfg: LingConfig, mesh: Mapping[str, int], *, rows: int, seq_len: int,
                device_memory_gb: float | None = None, headroom: float = 0.9,
                optimizer_dtype: str = "float32", kv_slots: int = 0, kv_context: int = 0) -> MemoryPlan:
    """Per-device memory of training `model_cfg` on a mesh of `mesh` sizes with micro-batches of `rows` x `seq_len`.

    `device_memory_gb` is the per-device capacity in GiB (2**30 bytes); the plan fits when the total is at most
    `headroom` of it. Not counted: the per-micro-batch gradient before it is added to the float32 accumulator,
    XLA temporaries and fragmentation. A `context` axis splits every row's tokens (`seq_len` must be divisible by
    it; rows split over the batch axes only). `kv_slots` x `kv_context`: the embedded rollout engine's KV cache
    when it runs on the same devices (slots sharded over the batch axes and `context`, the cache sequence not
    split, KV heads over `tensor`, compute dtype).
    """
    sizes = mesh_sizes(mesh)
    for name, value in (("rows", rows), ("seq_len", seq_len)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if optimizer_dtype not in DTYPE_BYTES:
        raise ValueError(f"optimizer_dtype={optimizer_dtype!r}; expected one of {sorted(DTYPE_BYTES)}")
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom={headroom} must lie in (0, 1]")
    if device_memory_gb is not None and not device_memory_gb > 0:
        raise ValueError(f"device_memory_gb={device_memory_gb} must be positive")
    abstract_mesh = jax.sharding.AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES)
    check_context(abstract_mesh, {"seq_len": seq_len})
    _, trainable, frozen = split_model(abstract_model(model_cfg))
    train_shards, frozen_shards = _shards(trainable, abstract_mesh), _shards(frozen, abstract_mesh)
    param = sum(s.size * s.itemsize for s in train_shards + frozen_shards)
    n_train = sum(s.size for s in train_shards)
    grad, optimizer = 4 * n_train, 2 * DTYPE_BYTES[optimizer_dtype] * n_train
    # One layer's weights as the forward sees them: gathered over fsdp and context, still split over expert / tensor.
    per_stack = {k: 0 for k in _STACKS}
    for s in train_shards:
        stack = s.name.split("/")[0]
        if stack in per_stack:
            parts = [a for p in s.spec for a in ((p,) if isinstance(p, str) else (p or ()))]
            gathered = math.prod(sizes[a] for a in parts if a in ("fsdp", "context"))
            per_stack[stack] += s.size * gathered // s.shape[0]
    rows_per_device = -(-rows // batch_shards(abstract_mesh))
    tensor, context = sizes["tensor"], sizes["context"]
    local = seq_len // context  # each device's share of a row's tokens
    act = activation_bytes(model_cfg, rows_per_device * local, tensor, max(per_stack.values()),
                           row_tokens=rows_per_device * seq_len if context > 1 else 0)
    attention = attention_bytes(model_cfg, rows_per_device, local, seq_len, tensor)
    # With context > 1 each device chunks its own share of a row (all of it: no last token dropped).
    chunk = min(model_cfg.compute.logprob_chunk, local if context > 1 else max(seq_len - 1, 1))
    # One token chunk's logits against one vocabulary block (`token_logprobs`), the block split over tensor.
    _, block, _ = vocab_blocks(model_cfg.vocab_size, model_cfg.compute.logprob_vocab_chunk)
    logits = rows_per_device * chunk * -(-block // tensor) * 4 * 2
    kv_heads = -(-model_cfg.num_key_value_heads // tensor)
    slots_per_device = -(-kv_slots // batch_shards(abstract_mesh, rows_over_context=True))
    kv = (slots_per_device * kv_context * model_cfg.num_hidden_layers * 2 * kv_heads * model_cfg.head_dim
          * DTYPE_BYTES[model_cfg.compute.dtype])
    total = param + grad + optimizer + act + attention + logits + kv
    capacity = None if device_memory_gb is None else int(device_memory_gb * GiB)
    largest = sorted(train_shards + frozen_shards, key=lambda s: -s.size * s.itemsize)[:5]
    count = count_params(model_cfg)
    return MemoryPlan(
        mesh=sizes, devices=math.prod(sizes.values()), params_total=count.total, params_active=count.active,
        param_bytes=param, grad_bytes=grad, optimizer_bytes=optimizer, activation_bytes=act,
        attention_bytes=attention, logits_bytes=logits,
        kv_cache_bytes=kv,
        total_bytes=total, device_memory_bytes=capacity,
        fits=None if capacity is None else total <= headroom * capacity,
        largest_params=[(s.name, s.shape, s.shard) for s in largest], headroom=headroom)


def model_config(cfg: PipelineConfig) -> LingConfig:
    """The architecture a pipeline config trains: the preset (with overrides), else the weights' config.json / meta."""
    m = cfg.model
    compute = m.overrides.get("compute", {})
    if m.preset:
        from ringjax.model import preset
        return preset(m.preset, **m.overrides)
    if m.hf_path:
        from ringjax.hf import read_config
        return read_config(m.hf_path, **compute)
    from ringjax.trainer.model_checkpoint import latest_step_dir, read_model_config
    return read_model_config(latest_step_dir(m.checkpoint), **compute)


def _local_memory_gb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats["bytes_limit"] / 2**30 if "bytes_limit" in stats else None


def plan_pipeline(cfg: PipelineConfig, devices: int | None = None,
                  device_memory_gb: float | None = None) -> dict[str, MemoryPlan]:
    """{phase: plan} for SFT (when enabled) and every RL stage, with their micro-batch shapes (`ringjax plan`)."""
    axes = cfg.mesh.axes()
    if devices is None:
        devices = jax.device_count() if -1 in axes.values() else math.prod(axes.values())
    mesh = resolve_mesh_sizes(axes, devices)
    memory = device_memory_gb or cfg.mesh.device_memory_gb
    if memory is None:
        memory = _local_memory_gb()
    model = model_config(cfg)
    phases = {}
    if cfg.sft.enabled:
        phases["sft"] = (cfg.sft.train.rows, cfg.sft.train.seq_len, 0, 0)
    for stage in cfg.stages:
        rl = cfg.stage_rl(stage)
        shared = rl.rollout.engine == "jax" and rl.rollout.workers == 0  # the engine's KV cache on these devices
        slots = (rl.rollout.slots or rl.omega) if shared else 0
        phases[f"rl {stage.name}"] = (rl.rows, rl.seq_len, slots, rl.max_prompt_len + rl.max_new_tokens)
    return {name: plan_memory(model, mesh, rows=rows, seq_len=seq_len, device_memory_gb=memory,
                              optimizer_dtype=model.compute.param_dtype, kv_slots=slots, kv_context=context)
            for name, (rows, seq_len, slots, context) in phases.items()}
