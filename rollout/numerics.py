"""Controlled train-inference mismatch: the embedded engine computes with other numerics than the trainer.

A production RL run samples with an inference stack (bf16 or fp8 weights, its own MoE kernels, another summation
order) and trains in higher precision, so `log pi_train - log pi_infer` is never zero; IcePop's band and the
mismatch metrics exist because of it. With one process holding both sides, ringjax's default engine matches the
trainer to float32 rounding. `EngineNumerics` (the `rollout.numerics` config section) re-creates each known source
on purpose, one knob at a time, so its effect on the mismatch (benchmarks/mismatch_sources.py, docs/mismatch.md)
and on training can be measured:

- `dtype`: the engine's weights AND activations in bfloat16 (its model is built with compute.dtype and
  compute.param_dtype of that type) while the trainer keeps its own;
- `quant: fp8`: simulated fp8 e4m3 weights with blockwise scales, as serving engines hold DeepSeek-style fp8
  checkpoints: every weight matrix (every expert's matrix on its own) is cut into `fp8_block` x `fp8_block` tiles,
  each tile scaled by amax / 448, rounded to e4m3 and dequantised; 1-D weights (norms, biases), the router and
  `expert_bias` stay exact, so quantisation changes the experts' outputs, not which experts the weights pick;
- `moe`: another grouped-expert kernel (compute.moe) at the same precision: another summation and combine order;
- `weight_noise`: a continuously tunable strength: every weight w becomes w * (1 + weight_noise * N(0, 1)), the
  noise drawn from (seed, policy version), so each policy version's engine is one fixed perturbation of the
  trainer's, redrawn when the policy changes (like a requantisation per weight update).

`engine_config` and `engine_state` are pure: the engine builds its model graph from `engine_config(trainer cfg)`
and passes every state it is given through `engine_state`. The default `EngineNumerics()` changes nothing and
`engine_state` then returns its input itself: the default engine still runs on the trainer's live arrays.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx

from ringjax.model import LingConfig
from ringjax.typing import Array, Float

Dtype = Literal["same", "float32", "bfloat16"]
Quant = Literal["none", "fp8"]
MoeKernel = Literal["same", "segment", "gather", "dense", "ragged_dot"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn value: a tile's amax maps onto it
STACK_AXES = ("layers", "expert")  # leading axes that stack independent matrices (per layer, per expert)
EXACT_AXES = ("router_expert",)  # router weights and expert_bias: routing stays exact under quantisation
MERGED_AXES = {"head_dim": ("heads", "kv_heads")}  # head_dim joins its heads axis: wq [H, N*D], wo [N*D, H]


@dataclasses.dataclass(frozen=True)
class EngineNumerics:
    """How the embedded engine's numerics differ from the trainer's (module docstring); the default: not at all."""

    dtype: Dtype = "same"  # engine weights and activations: same (the trainer's compute dtypes), float32, bfloat16
    quant: Quant = "none"  # weight quantisation: none, or fp8 (simulated e4m3 with one scale per fp8_block tile)
    fp8_block: int = 128  # side of the square tiles that share one fp8 scale (DeepSeek-V3 style: 128)
    moe: MoeKernel = "same"  # the engine's grouped-expert kernel: same (the trainer's), segment, gather, dense,
    # ragged_dot
    weight_noise: float = 0.0  # every engine weight w -> w (1 + weight_noise N(0, 1)), redrawn per policy version
    seed: int = 0  # seed of the weight noise (mixed with the policy version)

    def __post_init__(self):
        for name, choices in (("dtype", Dtype), ("quant", Quant), ("moe", MoeKernel)):
            if getattr(self, name) not in get_args(choices):
                raise ValueError(f"rollout.numerics.{name}={getattr(self, name)!r} is not one of {get_args(choices)}")
        if isinstance(self.fp8_block, bool) or not isinstance(self.fp8_block, int) or self.fp8_block < 1:
            raise ValueError(f"rollout.numerics.fp8_block={self.fp8_block!r} must be an int >= 1")
        if isinstance(self.weight_noise, bool) or not isinstance(self.weight_noise, int | float) or not (
                math.isfinite(self.weight_noise) and self.weight_noise >= 0):
            raise ValueError(f"rollout.numerics.weight_noise={self.weight_noise!r} must be a finite number >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"rollout.numerics.seed={self.seed!r} must be an int in [0, 2^32)")

    @property
    def is_default(self) -> bool:
        """True when the engine computes exactly as the trainer (every field at its default)."""
        return self == EngineNumerics()

    @property
    def changes_weights(self) -> bool:
        """True when `engine_state` may change the weights' values or dtypes (`moe` changes only the graph)."""
        return self.dtype != "same" or self.quant != "none" or self.weight_noise > 0

    def describe(self) -> str:
        """A short label for logs: "trainer numerics", or the changes, e.g. "bfloat16, fp8 e4m3 block 128"."""
        parts = []
        if self.dtype != "same":
            parts.append(self.dtype)
        if self.quant == "fp8":
            parts.append(f"fp8 e4m3 block {self.fp8_block}")
        if self.moe != "same":
            parts.append(f"moe {self.moe}")
        if self.weight_noise > 0:
            parts.append(f"weight noise {self.weight_noise:g} (seed {self.seed})")
        return ", ".join(parts) or "trainer numerics"


def engine_config(cfg: LingConfig, numerics: EngineNumerics) -> LingConfig:
    """The engine's model config: the trainer's `cfg` with the compute dtypes / MoE kernel `numerics` asks for
    (`cfg` itself when it asks for none)."""
    compute = {}
    if numerics.dtype != "same":
        compute.update(dtype=numerics.dtype, param_dtype=numerics.dtype)
    if numerics.moe != "same":
        compute["moe"] = numerics.moe
    return cfg.replace(compute=compute) if compute else cfg


def fp8_quantize(x: Float[Array, "... R C"], block: int) -> tuple[Array, Float[Array, "... Rb Cb"]]:
    """Blockwise e4m3: (values [... R C] as float8_e4m3fn, float32 scales [... ceil(R/block) ceil(C/block)]).

    Each `block` x `block` tile (the last row / column of tiles may be partial) gets scale = amax / 448, so its
    largest magnitude maps onto e4m3's largest finite value; an all-zero tile gets scale 1. Rounding is to nearest
    (ties to even), relative error <= 2^-4 for scaled magnitudes >= 2^-6 (e4m3's smallest normal), absolute error
    <= 2^-10 * scale below (its subnormals)."""
    *lead, r, c = x.shape
    rb, cb = -(-r // block), -(-c // block)
    pad = [(0, 0)] * len(lead) + [(0, rb * block - r), (0, cb * block - c)]
    tiles = jnp.pad(x.astype(jnp.float32), pad).reshape(*lead, rb, block, cb, block)
    amax = jnp.max(jnp.abs(tiles), axis=(-3, -1))  # [... Rb Cb]
    scale = jnp.where(amax > 0, amax / FP8_MAX, 1.0)
    q = jnp.clip(tiles / scale[..., :, None, :, None], -FP8_MAX, FP8_MAX).astype(jnp.float8_e4m3fn)
    return q.reshape(*lead, rb * block, cb * block)[..., :r, :c], scale


def fp8_dequantize(q: Array, scale: Float[Array, "... Rb Cb"], block: int) -> Float[Array, "... R C"]:
    """float32 values of `fp8_quantize`'s output."""
    r, c = q.shape[-2:]
    full = jnp.repeat(jnp.repeat(scale, block, axis=-2), block, axis=-1)[..., :r, :c]
    return q.astype(jnp.float32) * full


def fp8_qdq(x: Float[Array, "... R C"], block: int) -> Float[Array, "... R C"]:
    """`x` rounded through blockwise fp8 e4m3 and back (float32)."""
    return fp8_dequantize(*fp8_quantize(x, block), block)


def matrix_split(axes: tuple[str, ...] | None) -> tuple[int, int] | None:
    """(number of leading stack axes, index of the first column axis) of a weight with logical `axes`, or None
    when it is not a matrix that fp8 quantises (1-D weights, router and expert bias, unknown layout).

    Leading `layers` / `expert` axes stack independent matrices; `head_dim` joins the heads axis before it, so an
    attention projection is the 2-D matrix it is in HF layout (wq: embed x heads*head_dim)."""
    if not axes:
        return None
    if any(a in EXACT_AXES for a in axes):
        return None
    lead = 0
    while lead < len(axes) and axes[lead] in STACK_AXES:
        lead += 1
    groups = []  # start index of each matrix dimension
    for i in range(lead, len(axes)):
        if not (groups and axes[i] in MERGED_AXES and axes[i - 1] in MERGED_AXES[axes[i]]):
            groups.append(i)
    return (lead, groups[1]) if len(groups) == 2 else None


def _quantize_leaf(x: Array, split: tuple[int, int], block: int) -> Float[Array, "..."]:
    lead, col = split
    shape = x.shape
    matrices = x.reshape(math.prod(shape[:lead]), math.prod(shape[lead:col]), math.prod(shape[col:]))
    return fp8_qdq(matrices, block).reshape(shape)


def _path_key(path: tuple) -> int:
    return zlib.crc32("/".join(str(p) for p in path).encode())


def _transform(state: nnx.State, version, seed, strength, *, dtype: str, quant: str, block: int,
               noisy: bool) -> nnx.State:
    """The weights as the engine holds them; every `nnx.Param` changes, other variables (expert_bias) stay.
    `version`, `seed` and `strength` are traced: one compile serves every policy version and noise strength."""
    key = jax.random.fold_in(jax.random.key(seed), version)
    out = []
    for path, var in nnx.to_flat_state(state):
        if not isinstance(var, nnx.Variable):
            raise TypeError(f"engine_state: {path} is a bare array; pass an nnx.State of Variables (axes metadata)")
        if isinstance(var, nnx.Param):
            x = var.get_value()
            w = x.astype(jnp.float32)
            if noisy:  # noise first: the engine quantises the weights it is sent
                noise = jax.random.normal(jax.random.fold_in(key, _path_key(path)), w.shape, jnp.float32)
                w = w * (1.0 + strength * noise)
            split = matrix_split(var.get_metadata().get("axes"))
            if quant == "fp8" and split is not None:
                w = _quantize_leaf(w, split, block)
            var = var.replace(w.astype(x.dtype if dtype == "same" else jnp.dtype(dtype)))
        out.append((path, var))
    return nnx.from_flat_state(out)


_transform_jit = jax.jit(_transform, static_argnames=("dtype", "quant", "block", "noisy"))


def engine_state(state: nnx.State, numerics: EngineNumerics, version: int | Array) -> nnx.State:
    """The engine's copy of the trainer's weights `state` under `numerics` at policy `version` (the noise key).

    `state` itself when nothing changes the weights (no copy: the default engine keeps the trainer's live arrays);
    otherwise one jitted pass on device, results placed like the inputs. Traceable: callable inside `jax.jit`."""
    if not _changes(state, numerics):
        return state
    n = numerics
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state))
    if not traced:  # committed to where they are: one compile whether they come from jit or device_put
        state = jax.tree.map(lambda x: jax.device_put(x, x.sharding), state)
    new = _transform_jit(state, jnp.asarray(version, jnp.uint32), jnp.asarray(n.seed, jnp.uint32),
                         jnp.asarray(n.weight_noise, jnp.float32), dtype=n.dtype, quant=n.quant, block=n.fp8_block,
                         noisy=n.weight_noise > 0)
    return new if traced else jax.tree.map(lambda a, old: jax.device_put(a, old.sharding), new, state)


def _changes(state: nnx.State, numerics: EngineNumerics) -> bool:
    if numerics.quant != "none" or numerics.weight_noise > 0:
        return True
    if numerics.dtype == "same":
        return False
    want = jnp.dtype(numerics.dtype)
    return any(v.get_value().dtype != want for _, v in nnx.to_flat_state(state) if isinstance(v, nnx.Param))
