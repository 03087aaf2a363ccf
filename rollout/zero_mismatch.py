"""Zero-mismatch decoding: the engine reports, bit for bit, the log-probs the trainer recomputes for its tokens.

The control every train / inference mismatch ablation needs: with `JaxEngine(..., zero_mismatch=True)` the ratio
k = pi_old / pi_infer is exactly 1 on on-policy tokens, so whatever an IcePop / TIS / MIS run measures against it is
due to the correction, not to numerical noise. The normal engine decodes one token at a time from a KV cache, a
different reduction order than the trainer's full forward (|dlogp| ~1e-6 in float32).

What one decode step does here, for every slot of the engine:
- runs the trainer's forward: `model(tokens, positions, segment_ids)` over a fixed window [rows, W] laid out as
  `ringjax.trainer.c3po.pack_micro_batches(..., packed=False)` lays out a row (the sequence from column 0 with
  positions 0..n-1 and segment 1; after it token 0 at position 0, segment 0), W being the engine's context, in
  groups of `rows` slots (`jax.lax.map`, as the train step maps over its micro-batches);
- SAMPLES the next token with `ringjax.sampling.sample_rows` (the normal engine's rule, same key: temperature,
  top-p) from `model.logits` of that forward's hidden state at the slot's last position n - 1;
- REPORTS `token_logprobs(hidden[:, :-1], head, tokens[:, 1:], logprob_chunk, temperature, logprob_vocab_chunk)
  [n - 1]` on the same forward with the sampled token written at column n: the trainer's own log-prob function
  with the trainer's chunking, at the trainer's temperature (a static float; greedy slots are reported at
  temperature 1, the normal engine's convention). The KV cache is not read: every step recomputes the whole
  window, which is what the mode costs (`benchmarks/zero_mismatch_bench.py`).

Conditions, established by experiment on XLA:CPU (float32; docs/mismatch.md "Zero-mismatch control"):
- the forward's row count must equal the trainer's micro-batch rows (`rows`): a matmul over 8 rows does not
  give the bits of the same rows in a matmul over 4, whatever the MoE (`gather`, `dense`) or attention
  (`xla`, `reference`) implementation; the row a sequence lands in and the other rows' content do not matter;
- the window W must equal the trainer's `seq_len`, one sequence per row from column 0 (packing breaks it);
- one temperature for all active slots, the trainer's; the same weights (on-policy tokens) and compute config;
- what lies in masked positions (the not yet generated future) does not matter: masked scores contribute exact
  zeros.
Verified on one device; under a mesh the engine and the trainer would shard rows differently.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringjax.model.logprobs import token_logprobs
from ringjax.sampling import sample_rows
from ringjax.sharding import replicated
from ringjax.typing import Array, Float, Int


def window_layout(tokens: Int[Array, "B W"], length: Int[Array, " B"]) -> dict[str, Int[Array, "B W"]]:
    """A trainer row of each context: tokens 0..n-1 at positions 0..n-1, segment 1; padding (token 0, position 0,
    segment 0) after it, as `pack_micro_batches(..., packed=False)` writes it."""
    cols = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]  # [1 W]
    valid = cols < length[:, None]  # [B W]
    return {"tokens": jnp.where(valid, tokens, 0), "positions": jnp.where(valid, cols, 0),
            "segment_ids": valid.astype(jnp.int32)}


def _decode_full(graphdef: nnx.GraphDef, state: nnx.State, tokens: Int[Array, "B W"], length: Int[Array, " B"],
                 allowance: Int[Array, " B"], temperature: Float[Array, " B"], top_p: Float[Array, " B"],
                 stop_ids: Int[Array, "B T"], key: jax.Array, steps: int, use_top_p: bool, logp_temperature: float,
                 rows: int):
    """Up to `steps` full-recompute decode steps over every slot (B a multiple of `rows`). A slot is active while
    `allowance > 0`; it emits one token per step and stops after a stop id or when its allowance runs out. Returns
    (tokens [B N], logprobs [B N], routes [B N L X] (the experts at the position that produced each token),
    emitted [B], stopped [B], last [B], pos [B] (the position of `last`), window [B W])."""
    model = nnx.merge(graphdef, state)
    cfg = model.config
    b, w = tokens.shape
    groups = b // rows
    layers, k = cfg.num_moe_layers, cfg.num_experts_per_tok if cfg.num_moe_layers else 0
    slot = jnp.arange(b)

    def grouped(a):
        return a.reshape(groups, rows, *a.shape[1:])

    def forward(mb):
        out = model(mb["tokens"], mb["positions"], mb["segment_ids"])
        return out.hidden, out.aux.experts  # [R W H], [L R W X]

    def score(xs):
        hidden, window = xs
        return token_logprobs(hidden[:, :-1], model.head_weight(), window[:, 1:], cfg.compute.logprob_chunk,
                              logp_temperature, cfg.compute.logprob_vocab_chunk)[0]  # [R W-1]

    def body(carry):
        i, window, length, left, stopped, toks, lps, routes = carry
        active = left > 0  # [B]
        hidden, experts = jax.lax.map(forward, jax.tree.map(grouped, window_layout(window, length)))
        hidden = hidden.reshape(b, w, -1)  # [B W H]
        at = jnp.clip(length - 1, 0, w - 1)  # [B] the position that predicts the next token
        logits = model.logits(jnp.take_along_axis(hidden, at[:, None, None], axis=1))[:, 0]  # [B V]
        new, _ = sample_rows(logits, jax.random.fold_in(key, i), temperature, top_p, use_top_p)
        new = jnp.where(active, new, 0)
        col = jnp.clip(length, 0, w - 1)  # an active slot has room: check_request bounds prompt + max_tokens by W
        window = window.at[slot, col].set(jnp.where(active, new, window[slot, col]))
        logp = jax.lax.map(score, (grouped(hidden), grouped(window))).reshape(b, w - 1)  # [B W-1]
        logp = jnp.take_along_axis(logp, jnp.clip(at, 0, w - 2)[:, None], axis=1)[:, 0]  # [B]
        experts = jnp.moveaxis(experts, 1, 0).reshape(layers, b, w, k)  # [L B W X]
        here = jnp.take_along_axis(experts, at[None, :, None, None], axis=2)[:, :, 0]  # [L B X]
        toks = toks.at[:, i].set(new)
        lps = lps.at[:, i].set(jnp.where(active, logp, 0.0))
        routes = routes.at[:, i].set(jnp.moveaxis(here, 0, 1))
        hit = active & jnp.any(new[:, None] == stop_ids, axis=-1)  # [B]
        left = jnp.where(hit, 0, left - active.astype(jnp.int32))
        return (i + 1, window, length + active.astype(jnp.int32), left, stopped | hit, toks, lps, routes)

    def cond(carry):
        return (carry[0] < steps) & jnp.any(carry[3] > 0)

    carry = (jnp.zeros((), jnp.int32), tokens, length, allowance, jnp.zeros((b,), bool),
             jnp.zeros((b, steps), jnp.int32), jnp.zeros((b, steps), jnp.float32),
             jnp.zeros((b, steps, layers, k), jnp.int32))
    _, window, new_length, _, stopped, toks, lps, routes = jax.lax.while_loop(cond, body, carry)
    last = jnp.take_along_axis(window, jnp.clip(new_length - 1, 0, w - 1)[:, None], axis=1)[:, 0]
    return replicated((toks, lps, routes, new_length - length, stopped, last, new_length - 1, window))


decode_full = jax.jit(_decode_full, static_argnames=("graphdef", "steps", "use_top_p", "logp_temperature", "rows"))


def scoring_temperature(temperature: Float[np.ndarray, " B"], active: Sequence[bool]) -> float:
    """The one temperature the reported log-probs are taken at: the active slots' (greedy: 1.0). Raises ValueError
    when active slots differ: the trainer scores every token at one temperature."""
    values = {float(t) for t, a in zip(temperature, active) if a}
    if len(values) > 1:
        raise ValueError(f"zero_mismatch: requests with different temperatures {sorted(values)} decode together; "
                         "the trainer scores every token at one temperature")
    t = values.pop() if values else 1.0
    return t if t > 0 else 1.0


def zero_mismatch_decode(graphdef: nnx.GraphDef, state: nnx.State, contexts: Sequence[np.ndarray | None],
                         width: int, rows: int, allowance: Int[np.ndarray, " B"], temperature: Float[np.ndarray, " B"],
                         top_p: Float[np.ndarray, " B"], stop_ids: Int[np.ndarray, "B T"], key: jax.Array,
                         steps: int) -> tuple:
    """One decode chunk for the engine's slots: `contexts[i]` is slot i's prompt + everything it generated (None:
    idle), `width` the window W (the engine's context, the trainer's `seq_len`), `rows` the trainer's micro-batch
    rows. The slots are padded with idle rows to a multiple of `rows`. Returns `_decode_full`'s arrays for the B
    given slots, without the window."""
    b = len(contexts)
    padded = -(-b // rows) * rows
    window = np.zeros((padded, width), np.int32)
    length = np.zeros((padded,), np.int32)
    for i, c in enumerate(contexts):
        if c is not None:
            if len(c) + int(allowance[i]) > width:
                raise ValueError(f"zero_mismatch: slot {i} needs {len(c)} + {int(allowance[i])} positions, more than "
                                 f"the window of {width}")
            window[i, :len(c)], length[i] = c, len(c)

    def pad(a, fill):
        a = np.asarray(a)
        return np.concatenate([a, np.full((padded - b, *a.shape[1:]), fill, a.dtype)])

    t = scoring_temperature(temperature, [c is not None and int(n) > 0 for c, n in zip(contexts, allowance)])
    out = decode_full(graphdef, state, jnp.asarray(window), jnp.asarray(length), jnp.asarray(pad(allowance, 0)),
                      jnp.asarray(pad(temperature, 1.0)), jnp.asarray(pad(top_p, 1.0)), jnp.asarray(pad(stop_ids, -1)),
                      key, steps, bool(np.any(np.asarray(top_p) < 1)), t, rows)
    return tuple(a[:b] for a in out[:-1])
