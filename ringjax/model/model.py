"""The Ling causal LM as Flax NNX modules that only hold parameters; the math is in pure functions.

`Ling(cfg, rngs=...)` covers both architectures. Parameters carry logical `axes` metadata (see
ringjax.sharding). The router's `expert_bias` is an `ExpertBias` variable, not an `nnx.Param`, so
optimisers (`wrt=nnx.Param`) and gradients never touch it: it stays frozen during RL (Ring-1T).
`norm_head` (Ling 1.0) L2-normalises the LM head over the vocabulary axis at use time.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ringjax.model.config import LingConfig
from ringjax.model.decoder import ACT, LayerAux, ParamSpec, layer_spec, run_stack, stack_arrays
from ringjax.model.logprobs import next_token_logprobs
from ringjax.model.ops import rms_norm
from ringjax.model.rope import rope_tables
from ringjax.sharding import constrain
from ringjax.typing import Array, Float, Int

INIT_STD = 0.02


class ExpertBias(nnx.Variable):
    """Router bias used only to select experts (Ling 2.0); never trained by gradient."""


def _init(spec: ParamSpec, key: jax.Array, lead: tuple[int, ...], dtype) -> jax.Array:
    shape = lead + spec.shape
    if spec.init == "ones":
        return jnp.ones(shape, dtype)
    if spec.init == "zeros":
        return jnp.zeros(shape, dtype)
    return (INIT_STD * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


class Stack(nnx.Module):
    """`n` decoder layers of one kind, every parameter stacked along a leading `layers` axis."""

    def __init__(self, cfg: LingConfig, n: int, moe: bool, rngs: nnx.Rngs):
        self.moe = moe
        self.names = tuple(layer_spec(cfg, moe))
        for name, spec in layer_spec(cfg, moe).items():
            value = _init(spec, rngs.params(), (n,), jnp.dtype(cfg.compute.param_dtype))
            if name == "expert_bias":
                setattr(self, name, ExpertBias(value.astype(jnp.float32), axes=("layers",) + spec.axes))
            else:
                setattr(self, name, nnx.Param(value, axes=("layers",) + spec.axes))

    def arrays(self) -> dict[str, Array]:
        return stack_arrays({name: getattr(self, name) for name in self.names})


class MTP(nnx.Module):
    """Multi-token-prediction layers (Ling 2.0 `num_nextn_predict_layers`), kept for checkpoint fidelity."""

    def __init__(self, cfg: LingConfig, rngs: nnx.Rngs):
        n, h, dt = cfg.num_nextn_predict_layers, cfg.hidden_size, jnp.dtype(cfg.compute.param_dtype)
        self.enorm = nnx.Param(jnp.ones((n, h), dt), axes=("layers", "norm"))
        self.hnorm = nnx.Param(jnp.ones((n, h), dt), axes=("layers", "norm"))
        self.final_norm = nnx.Param(jnp.ones((n, h), dt), axes=("layers", "norm"))
        eh = INIT_STD * jax.random.normal(rngs.params(), (n, 2 * h, h), jnp.float32)
        self.eh_proj = nnx.Param(eh.astype(dt), axes=("layers", "mtp_in", "embed"))
        self.layers = Stack(cfg, n, moe=True, rngs=rngs)


class ModelOutput(NamedTuple):
    hidden: Float[Array, "B S H"]  # after the final norm: feed to `logits` / `token_logprobs`
    residual: Float[Array, "B S H"]  # before the final norm (MTP input)
    cache: dict | None
    aux: LayerAux  # per-MoE-layer router load-balance, z-loss and expert ids [L_moe B S X]


class Ling(nnx.Module):
    def __init__(self, cfg: LingConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        v, h, dt = cfg.vocab_size, cfg.hidden_size, jnp.dtype(cfg.compute.param_dtype)
        self.embed = nnx.Param((INIT_STD * jax.random.normal(rngs.params(), (v, h))).astype(dt),
                               axes=("vocab", "embed"))
        self.dense_layers = Stack(cfg, cfg.num_dense_layers, False, rngs) if cfg.num_dense_layers else None
        self.moe_layers = Stack(cfg, cfg.num_moe_layers, True, rngs) if cfg.num_moe_layers else None
        self.final_norm = nnx.Param(jnp.ones((h,), dt), axes=("norm",))
        self.lm_head = None if cfg.tie_word_embeddings else nnx.Param(
            (INIT_STD * jax.random.normal(rngs.params(), (v, h))).astype(dt), axes=("vocab", "embed"))
        self.mtp = MTP(cfg, rngs) if cfg.num_nextn_predict_layers else None

    def __call__(self, tokens: Int[Array, "B S"], positions: Int[Array, "B S"] | None = None,
                 segment_ids: Int[Array, "B S"] | None = None, cache: dict | None = None,
                 routes: Int[Array, "B S L X"] | None = None) -> ModelOutput:
        """Runs the decoder. `positions` default to 0..S-1; `segment_ids` separate packed sequences;
        with a `cache` (see `init_cache`) the tokens' keys/values are written at `positions`; `routes` replays
        expert ids per token and MoE layer (router replay; a token with a negative id routes itself)."""
        cfg = self.config
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        table = constrain(self.embed[...].astype(cfg.compute.dtype), ("vocab", None))  # gathered over fsdp, as
        x = constrain(table[tokens], ACT)  # every layer's weights are: a lookup into split rows cannot be split
        rope = rope_tables(positions, cfg)
        new_cache, auxes = {"dense": None, "moe": None}, []
        for key, stack in (("dense", self.dense_layers), ("moe", self.moe_layers)):
            if stack is None:
                continue
            c = None if cache is None else cache[key]
            replay = None if routes is None or not stack.moe else jnp.moveaxis(routes, 2, 0)  # [L B S X]
            x, new_cache[key], aux = run_stack(x, stack.arrays(), positions, rope, segment_ids, c, cfg, stack.moe,
                                               replay)
            if stack.moe:
                auxes.append(aux)
        hidden = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
        if not auxes:
            none = jnp.zeros((0,) + tokens.shape + (0,), jnp.int32)
            auxes.append(LayerAux(jnp.zeros((0,)), jnp.zeros((0,)), none, none))
        aux = auxes[0]
        return ModelOutput(hidden, x, None if cache is None else new_cache, aux)

    def head_weight(self) -> Float[Array, "V H"]:
        cfg = self.config
        if cfg.tie_word_embeddings:
            return self.embed[...]
        w = self.lm_head[...]
        if cfg.norm_head:
            norm = jnp.linalg.norm(w.astype(jnp.float32), axis=0, keepdims=True)  # over vocab, per hidden column
            w = (w.astype(jnp.float32) / jnp.maximum(norm, 1e-7)).astype(w.dtype)
        return w

    def logits(self, hidden: Float[Array, "B S H"]) -> Float[Array, "B S V"]:
        """Full float32 logits; use `token_logprobs` for long sequences and large vocabularies."""
        w = self.head_weight()
        out = jnp.einsum("bsh,vh->bsv", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
        return constrain(out, ("batch", "seq", "act_vocab"))

    def token_logprobs(self, tokens: Int[Array, "B S"], positions: Int[Array, "B S"] | None = None,
                       segment_ids: Int[Array, "B S"] | None = None, temperature: float = 1.0
                       ) -> tuple[Float[Array, "B S-1"], Float[Array, "B S-1"]]:
        """log p(tokens[:, t+1] | tokens[:, :t+1]) and the entropy at each step, chunked over the sequence."""
        out = self(tokens, positions, segment_ids)
        return next_token_logprobs(out.hidden, self.head_weight(), tokens,
                                   self.config.compute.logprob_chunk, temperature,
                                   self.config.compute.logprob_vocab_chunk)

    def mtp_hidden(self, residual: Float[Array, "B S H"], tokens: Int[Array, "B S"],
                   positions: Int[Array, "B S"] | None = None) -> list[Float[Array, "B S H"]]:
        """Hidden states of each MTP depth i, predicting token t + 2 + i from position t.

        Depth i combines `hnorm(h)` of the previous depth with `enorm(embed(tokens shifted by i + 1))`
        through `eh_proj`, runs one MoE decoder layer and `final_layernorm`.
        """
        if self.mtp is None:
            raise ValueError("this model has no MTP layers (num_nextn_predict_layers=0)")
        cfg, m = self.config, self.mtp
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        rope, stack, eps = rope_tables(positions, cfg), m.layers.arrays(), cfg.rms_norm_eps
        h, outs = residual, []
        for i in range(cfg.num_nextn_predict_layers):
            nxt = jnp.pad(tokens[:, i + 1:], ((0, 0), (0, i + 1)))
            e = rms_norm(self.embed[...].astype(h.dtype)[nxt], m.enorm[i], eps)
            x = jnp.concatenate([e, rms_norm(h, m.hnorm[i], eps)], axis=-1) @ m.eh_proj[i].astype(h.dtype)
            layer = jax.tree.map(lambda a, i=i: a[i:i + 1], stack)
            x, _, _ = run_stack(x, layer, positions, rope, None, None, cfg, moe=True)
            h = x
            outs.append(rms_norm(x, m.final_norm[i], eps))
        return outs
