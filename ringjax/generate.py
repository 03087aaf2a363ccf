"""Static-batch sampler: jitted prefill of right-padded prompts into a KV cache, then one-token decode steps.

This is the sampler the embedded rollout engine builds its slots on: `prefill` and `decode` are separate
jitted functions of (graphdef, state, cache, ...) that donate the cache, so an engine can prefill some rows
and decode all of them; `generate` chains the two for one fixed batch.

- Each row b has its own prompt length; its first new token is sampled from the logits at position
  `prompt_lens[b] - 1`, and decode step t feeds the previous token at position `prompt_lens[b] + t - 1`.
  Prefill also writes K/V for the padding after a prompt; a decode step overwrites that slot before any
  query can attend to it (the mask is `key_pos <= query_pos`), so padding never leaks into a row.
- Sampling: `temperature == 0` is greedy; otherwise categorical over `logits / temperature`, restricted to
  the top-p nucleus when `top_p < 1`. The rule is `ringjax.sampling.sample_rows`, the JAX engine's per-slot
  sampler, called with this batch's one setting broadcast to every row: same key, same draws.
- Returned log-probs (what RL calls `logp_infer`): log-softmax of the temperature-scaled logits, WITHOUT the
  top-p truncation, so they compare directly with a trainer's `token_logprobs(..., temperature)`. Greedy
  (temperature 0) returns the log-prob under the unscaled (temperature 1) logits.
- A row that samples `eos_id` keeps that token (counted in its length, with its log-prob); every later
  slot holds `pad_id` with log-prob 0. The loop stops early once every row is done.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ringjax.model.kv_cache import init_cache
from ringjax.model.model import Ling
from ringjax.sampling import sample_rows
from ringjax.sharding import decode_layout, replicated
from ringjax.typing import Array, Bool, Float, Int


class GenerateOutput(NamedTuple):
    tokens: Int[Array, "B N"]  # generated ids; `pad_id` after a row's end
    logprobs: Float[Array, "B N"]  # float32 log-prob of each token (see module docstring); 0 after the end
    lengths: Int[Array, " B"]  # generated tokens per row, eos included


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Static sampling settings (part of the compiled function's key)."""

    temperature: float = 1.0
    top_p: float = 1.0
    eos_id: int | None = None
    pad_id: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")


def sample_logits(logits: Float[Array, "B V"], key: jax.Array,
                  sampling: Sampling) -> tuple[Int[Array, " B"], Float[Array, " B"]]:
    """One token per row and its log-prob under `logits / temperature` (no top-p truncation): `sample_rows` with
    the one setting on every row."""
    b = logits.shape[0]
    temperature = jnp.full((b,), sampling.temperature, jnp.float32)  # [B]
    top_p = jnp.full((b,), sampling.top_p, jnp.float32)  # [B]
    return sample_rows(logits, key, temperature, top_p, use_top_p=sampling.top_p < 1)


def _row_logits(model: Ling, hidden: Float[Array, "B S H"], index: Int[Array, " B"]) -> Float[Array, "B V"]:
    picked = jnp.take_along_axis(hidden, index[:, None, None], axis=1)  # [B 1 H]
    return model.logits(picked)[:, 0]


def _prefill(graphdef: nnx.GraphDef, state: nnx.State, cache: dict, prompts: Int[Array, "B P"],
             prompt_lens: Int[Array, " B"]) -> tuple[Float[Array, "B V"], dict]:
    model = nnx.merge(graphdef, state)
    b, p = prompts.shape
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))  # [B P]
    out = model(prompts, positions, cache=cache)
    return _row_logits(model, out.hidden, prompt_lens - 1), out.cache


prefill = jax.jit(_prefill, static_argnames="graphdef", donate_argnames="cache")
prefill.__doc__ = """Writes the prompts' K/V into `cache` at positions 0..P-1; returns each row's next-token
logits [B V] (taken at its last real token) and the updated cache (donated)."""


class _Loop(NamedTuple):
    step: Int[Array, ""]
    cache: dict
    last: Int[Array, " B"]  # token sampled at the previous step
    done: Bool[Array, " B"]
    tokens: Int[Array, "B N"]
    logprobs: Float[Array, "B N"]
    lengths: Int[Array, " B"]


def _emit(loop: _Loop, step: Int[Array, ""], new: Int[Array, " B"], logp: Float[Array, " B"],
          sampling: Sampling) -> _Loop:
    """Records step `step`'s tokens; finished rows get padding and stop counting."""
    new = jnp.where(loop.done, sampling.pad_id, new)  # [B]
    logp = jnp.where(loop.done, 0.0, logp)  # [B]
    tokens = jax.lax.dynamic_update_slice_in_dim(loop.tokens, new[:, None], step, axis=1)
    logprobs = jax.lax.dynamic_update_slice_in_dim(loop.logprobs, logp[:, None], step, axis=1)
    lengths = loop.lengths + (~loop.done).astype(jnp.int32)
    done = loop.done if sampling.eos_id is None else loop.done | (new == sampling.eos_id)
    return loop._replace(step=step + 1, last=new, done=done, tokens=tokens, logprobs=logprobs, lengths=lengths)


def _decode(graphdef: nnx.GraphDef, state: nnx.State, cache: dict, logits: Float[Array, "B V"],
            prompt_lens: Int[Array, " B"], key: jax.Array, max_new_tokens: int,
            sampling: Sampling) -> tuple[GenerateOutput, dict]:
    model = nnx.merge(graphdef, state)
    b, n = logits.shape[0], max_new_tokens
    zero = jnp.zeros((), jnp.int32)
    loop = _Loop(zero, cache, jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool),
                 jnp.full((b, n), sampling.pad_id, jnp.int32), jnp.zeros((b, n), jnp.float32),
                 jnp.zeros((b,), jnp.int32))
    loop = _emit(loop, zero, *sample_logits(logits, jax.random.fold_in(key, 0), sampling), sampling)

    def body(loop: _Loop) -> _Loop:
        positions = (prompt_lens + loop.step - 1)[:, None]  # [B 1] where `last` sits in the sequence
        out = model(loop.last[:, None], positions, cache=loop.cache)
        step_logits = model.logits(out.hidden)[:, 0]  # [B V]
        new, logp = sample_logits(step_logits, jax.random.fold_in(key, loop.step), sampling)
        return _emit(loop._replace(cache=out.cache), loop.step, new, logp, sampling)

    def cond(loop: _Loop) -> Bool[Array, ""]:
        return (loop.step < n) & ~jnp.all(loop.done)

    loop = jax.lax.while_loop(cond, body, loop)
    return replicated(GenerateOutput(loop.tokens, loop.logprobs, loop.lengths)), loop.cache


decode = jax.jit(_decode, static_argnames=("graphdef", "max_new_tokens", "sampling"), donate_argnames="cache")
decode.__doc__ = """Samples up to `max_new_tokens` per row starting from prefill's `logits`; returns the output
and the cache (donated), which then holds every fed token's K/V."""


def generate(model: Ling, prompts: Int[Array, "B P"], prompt_lens: Int[Array, " B"], max_new_tokens: int, *,
             rng: jax.Array, temperature: float = 1.0, top_p: float = 1.0, eos_id: int | None = None,
             pad_id: int = 0) -> GenerateOutput:
    """Samples `max_new_tokens` tokens after each right-padded prompt (`prompt_lens` >= 1 real tokens).

    Compiles once per (B, P, max_new_tokens) and sampling settings; `rng` is a `jax.random.key`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    sampling = Sampling(temperature, top_p, eos_id, pad_id)
    b, p = prompts.shape
    graphdef, state = nnx.split(model)
    prompts, prompt_lens = jnp.asarray(prompts, jnp.int32), jnp.asarray(prompt_lens, jnp.int32)
    with decode_layout():  # on a mesh with a context axis, rows split over it (one token per row a step)
        cache = init_cache(model.config, b, p + max_new_tokens)
        logits, cache = prefill(graphdef, state, cache, prompts, prompt_lens)
        return decode(graphdef, state, cache, logits, prompt_lens, rng, max_new_tokens, sampling)[0]


def greedy(model: Ling, prompts: Int[Array, "B P"], prompt_lens: Int[Array, " B"], max_new_tokens: int, *,
           eos_id: int | None = None, pad_id: int = 0) -> GenerateOutput:
    """Argmax decoding; log-probs are under the unscaled logits."""
    return generate(model, prompts, prompt_lens, max_new_tokens, rng=jax.random.key(0), temperature=0.0,
                    eos_id=eos_id, pad_id=pad_id)
