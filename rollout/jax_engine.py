"""The embedded JAX engine: slot-based continuous batching over the model's KV-cache path.

The engine owns `slots` rows of one KV cache [L, slots, max_context, G, D]. Each `step()`:
1. answers queued requests that cannot run (empty prompt, too long for the context) with `finish="error"`;
2. fills free slots with queued requests (FIFO), one jitted prefill per context-length bucket: a request's
   context (prompt + the tokens it already generated, for a continuation) minus its last token is written into
   its slot's cache rows; that last token becomes the slot's next input, so prefill needs no sampling and no head;
3. runs ONE jitted decode chunk of up to `decode_chunk` steps over all slots: every active slot feeds its last
   token at its position, samples the next one with its own temperature / top-p, and stops on a stop id or when
   it has used its token allowance; the chunk ends early when every slot is idle;
4. returns the requests that finished; their slots are refilled at the next `step()`, without waiting for the
   rest of the batch.

Every output carries its routing record (`rollout.routes`): the experts each MoE layer used at the position that
produced each token, and at every prefilled context position, so the trainer can replay them (R3) and measure how
often its own routing disagrees.

Why this is correct with stale cache rows: attention masks keys by position (`key_pos <= query_pos`), and a slot's
positions 0..n-1 are all rewritten (prefill, then each decode step writes before it attends) before a query at
position >= n reads them. Idle slots feed token 0 at position 0 into their own rows only.

Weights: the engine holds the model's `nnx.State`; `update_weights` swaps in another state (a trainer's live
arrays, already placed on the same mesh: no copy, no trip through the host) or loads a flat {path: array} mapping
(what a Ray worker receives). Slots that are mid-response keep their KV cache (computed by the previous policy)
and continue under the new one; their later tokens carry the new version. C3PO++ relies on that with
`rollout.carry_kv: keep` (`peek` reads what such a response holds, for a checkpoint); by default
(`recompute`) it interrupts (`abort`) and re-submits, so a continuation is re-prefilled by the policy that continues
it.
With `numerics` (`rollout.numerics`: bf16, simulated fp8, another MoE kernel, weight noise) every state passes
through `engine_state` first, a transformed copy: the engine then samples from a controlled mismatch of the trainer's
policy. `zero_mismatch` decodes with the trainer's own full forward instead (`rollout.zero_mismatch`).

Compilation: prefill compiles once per (new-request bucket, context-length bucket), both powers of two; decode
once per (chunk length, whether any slot uses top-p).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringjax.model.create import abstract_model
from ringjax.model.kv_cache import init_cache
from ringjax.model.model import Ling
from ringjax.sharding import batch_shards, replicated, use_mesh
from ringjax.typing import Array, Float, Int
from ringjax.sampling import sample_rows
from rollout.numerics import EngineNumerics, engine_config, engine_state
from rollout.routes import compact
from rollout.types import Output, Request, check_request
from rollout.zero_mismatch import zero_mismatch_decode
from rollout.weights import model_from_flat

MAX_STOP_IDS = 32


def _bucket(n: int, lo: int = 1) -> int:
    return max(lo, 1 << max(0, n - 1).bit_length())


def _prefill(graphdef: nnx.GraphDef, state: nnx.State, cache: dict, tokens: Int[Array, "K P"],
             slots: Int[Array, " K"]) -> tuple[dict, Int[Array, "K P L X"]]:
    """Writes K/V of `tokens` (positions 0..P-1, right-padded) into cache rows `slots` (out of range: dropped);
    returns the cache and the experts each position used in each MoE layer."""
    model = nnx.merge(graphdef, state)
    k, p = tokens.shape
    sub = jax.tree.map(lambda c: c[:, jnp.clip(slots, 0, c.shape[1] - 1)], cache)  # [L K S G D]
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (k, p))
    out = model(tokens, positions, cache=sub)
    cache = jax.tree.map(lambda c, n: c.at[:, slots].set(n, mode="drop"), cache, out.cache)
    return cache, replicated(jnp.moveaxis(out.aux.experts, 0, 2))


def _decode(graphdef: nnx.GraphDef, state: nnx.State, cache: dict, last: Int[Array, " B"], pos: Int[Array, " B"],
            allowance: Int[Array, " B"], temperature: Float[Array, " B"], top_p: Float[Array, " B"],
            stop_ids: Int[Array, "B T"], key: jax.Array, steps: int, use_top_p: bool):
    """Up to `steps` decode steps over every slot. A slot is active while `allowance > 0`; it emits one token per
    step and stops after a stop id or when its allowance runs out. Returns (tokens [B N], logprobs [B N], routes
    [B N L X] (the experts of the step that produced each token), emitted [B], stopped [B], last, pos, cache)."""
    model = nnx.merge(graphdef, state)
    b = last.shape[0]
    cfg = model.config
    layers, k = cfg.num_moe_layers, cfg.num_experts_per_tok if cfg.num_moe_layers else 0

    def body(carry):
        i, cache, last, pos, left, stopped, toks, lps, routes = carry
        active = left > 0  # [B]
        out = model(jnp.where(active, last, 0)[:, None], jnp.where(active, pos, 0)[:, None], cache=cache)
        logits = model.logits(out.hidden)[:, 0]  # [B V]
        new, logp = sample_rows(logits, jax.random.fold_in(key, i), temperature, top_p, use_top_p)
        new = jnp.where(active, new, 0)
        toks = toks.at[:, i].set(new)
        lps = lps.at[:, i].set(jnp.where(active, logp, 0.0))
        routes = routes.at[:, i].set(jnp.moveaxis(out.aux.experts[:, :, 0], 0, 1))  # [B L X]
        hit = active & jnp.any(new[:, None] == stop_ids, axis=-1)  # [B]
        left = jnp.where(hit, 0, left - active.astype(jnp.int32))
        return (i + 1, out.cache, jnp.where(active, new, last), pos + active.astype(jnp.int32), left,
                stopped | hit, toks, lps, routes)

    def cond(carry):
        return (carry[0] < steps) & jnp.any(carry[4] > 0)

    carry = (jnp.zeros((), jnp.int32), cache, last, pos, allowance, jnp.zeros((b,), bool),
             jnp.zeros((b, steps), jnp.int32), jnp.zeros((b, steps), jnp.float32),
             jnp.zeros((b, steps, layers, k), jnp.int32))
    _, cache, last, new_pos, _, stopped, toks, lps, routes = jax.lax.while_loop(cond, body, carry)
    return (*replicated((toks, lps, routes, new_pos - pos, stopped, last, new_pos)), cache)


_prefill_jit = jax.jit(_prefill, static_argnames="graphdef", donate_argnames="cache")
_decode_jit = jax.jit(_decode, static_argnames=("graphdef", "steps", "use_top_p"), donate_argnames="cache")


@dataclasses.dataclass
class _Slot:
    request: Request
    tokens: list[np.ndarray]  # generated this call, per chunk
    logprobs: list[np.ndarray]
    versions: list[np.ndarray]
    routes: list[np.ndarray] = dataclasses.field(default_factory=list)  # [n L X] per chunk
    context_routes: np.ndarray | None = None  # [C-1 L X] of the prefill
    emitted: int = 0


class JaxEngine:
    """Continuous-batching generation with a Ling model (see the module docstring)."""

    def __init__(self, model: Ling, *, slots: int = 8, max_context: int = 512, decode_chunk: int = 8,
                 seed: int = 0, mesh=None, version: int = 0, zero_mismatch: bool = False,
                 zero_mismatch_rows: int = 0, numerics: EngineNumerics | None = None):
        """`zero_mismatch`: decode with `rollout.zero_mismatch` (log-probs bit-equal to the trainer's recomputation
        of micro-batches of `zero_mismatch_rows` rows (0: `slots`) and seq_len `max_context`; slower).
        `numerics`: a controlled train-inference mismatch (`rollout.numerics`); None: the trainer's numerics."""
        if slots < 1 or decode_chunk < 1:
            raise ValueError(f"slots={slots} and decode_chunk={decode_chunk} must be >= 1")
        if zero_mismatch_rows < 0:
            raise ValueError(f"zero_mismatch_rows={zero_mismatch_rows} must be >= 0")
        self.zero_mismatch, self.zero_mismatch_rows = zero_mismatch, zero_mismatch_rows or slots
        shards = batch_shards(mesh, rows_over_context=True) if mesh is not None else 1
        if slots % shards:
            raise ValueError(f"slots={slots} is not divisible by the mesh's {shards} batch shards (its batch axes "
                             f"and context: the engine splits rows over both)")
        self.numerics = numerics or EngineNumerics()
        if zero_mismatch and not self.numerics.is_default:
            raise ValueError(f"zero_mismatch needs the trainer's numerics; rollout.numerics asks for "
                             f"{self.numerics.describe()}")
        self.train_config = model.config  # what update_weights receives; the engine's model: self.config
        self.config = engine_config(model.config, self.numerics)
        self.graphdef, state = nnx.split(model)
        if self.config != model.config:  # the engine's graph, without a second init
            self.graphdef = nnx.split(abstract_model(self.config))[0]
        self.state = engine_state(state, self.numerics, version)
        self.slots, self.max_context, self.decode_chunk, self.mesh = slots, max_context, decode_chunk, mesh
        self._shards = shards
        self.version = version
        self._key = jax.random.key(seed)
        self._calls = 0
        with use_mesh(mesh, rows_over_context=True):
            self._cache = init_cache(self.config, slots, max_context)
        self._queue: collections.deque[Request] = collections.deque()
        self._active: list[_Slot | None] = [None] * slots
        self._last = np.zeros((slots,), np.int32)
        self._pos = np.zeros((slots,), np.int32)
        self.stats = collections.Counter()

    # -- interface -------------------------------------------------------------------------------------------------
    def submit(self, requests: Sequence[Request]) -> None:
        self._queue.extend(requests)

    def num_pending(self) -> int:
        return len(self._queue) + sum(s is not None for s in self._active)

    def step(self) -> list[Output]:
        finished = self._reject_bad()
        self._fill_slots()
        if any(s is not None for s in self._active):
            finished += self._decode_chunk()
        return finished

    def abort(self, ids: Sequence[str] | None = None) -> list[Output]:
        wanted = None if ids is None else set(ids)
        out = []
        keep = collections.deque()
        for r in self._queue:
            if wanted is None or r.id in wanted:
                out.append(Output(r.id, [], [], [], "abort"))
            else:
                keep.append(r)
        self._queue = keep
        for i, s in enumerate(self._active):
            if s is not None and (wanted is None or s.request.id in wanted):
                out.append(self._output(s, "abort"))
                self._active[i] = None
        self.stats["aborted"] += len(out)
        return out

    def peek(self, ids: Sequence[str] | None = None) -> list[Output]:
        """Partial outputs (`finish="abort"`, the tokens so far) of the given (default: all) requests, which go on
        running: a queued request has none yet. Unknown ids are ignored."""
        wanted = None if ids is None else set(ids)
        out = [Output(r.id, [], [], [], "abort") for r in self._queue if wanted is None or r.id in wanted]
        return out + [self._output(s, "abort") for s in self._active
                      if s is not None and (wanted is None or s.request.id in wanted)]

    def update_weights(self, weights: Ling | nnx.State | Mapping[str, Any], version: int) -> None:
        """Swaps the policy. A model or `nnx.State` is used as is (in place: same arrays, no copy); a flat mapping
        (`flat_weights`) is checked against the current state and placed like it. Either then passes through
        `engine_state` (the default numerics: unchanged)."""
        if isinstance(weights, nnx.Module):
            weights = nnx.state(weights)
        if isinstance(weights, nnx.State):
            new = weights
        else:
            new = self._from_flat(weights)
        if jax.tree.structure(new) != jax.tree.structure(self.state):
            raise ValueError("update_weights: the new weights do not have this engine's model structure")
        self.state = engine_state(new, self.numerics, version)
        self.version = int(version)

    def reseed(self, key: jax.Array | int) -> None:
        """Restarts the sampling randomness from `key` (a run reseeds per iteration, so a resumed run samples
        exactly what an uninterrupted one did)."""
        self._key = jax.random.key(key) if isinstance(key, int) else key
        self._calls = 0

    def close(self) -> None:
        self._queue.clear()
        self._active = [None] * self.slots
        self._cache = None

    # -- internals -------------------------------------------------------------------------------------------------
    def _from_flat(self, weights: Mapping[str, Any]) -> nnx.State:
        """`weights` checked and cast by `model_from_flat` (trainer config), then placed like the current state."""
        new = nnx.state(model_from_flat(self.train_config, weights))
        return jax.tree.map(lambda n, old: jax.device_put(n, old.sharding), new, self.state)

    def _reject_bad(self) -> list[Output]:
        out, keep = [], collections.deque()
        for r in self._queue:
            why = check_request(r, self.max_context)
            if why is None and len(r.sampling.stop_ids) > MAX_STOP_IDS:
                why = f"request {r.id}: {len(r.sampling.stop_ids)} stop ids (at most {MAX_STOP_IDS})"
            if why is None:
                keep.append(r)
            else:
                out.append(Output.failed(r.id, why))
        self._queue = keep
        self.stats["rejected"] += len(out)
        return out

    def _fill_slots(self) -> None:
        free = [i for i, s in enumerate(self._active) if s is None]
        todo = [self._queue.popleft() for _ in range(min(len(free), len(self._queue)))]
        if not todo:
            return
        by_width: dict[int, list[tuple[int, np.ndarray]]] = collections.defaultdict(list)
        for slot, r in zip(free, todo):
            context = np.concatenate([r.prompt, r.generated])
            by_width[_bucket(len(context) - 1, 16)].append((slot, context))
            self._active[slot] = _Slot(r, [], [], [])
            self._last[slot], self._pos[slot] = context[-1], len(context) - 1
        for width, rows in sorted(by_width.items()):  # one prefill per context-length bucket: little padding
            k = -(-_bucket(len(rows)) // self._shards) * self._shards  # a prefill batch splits over the shards
            tokens = np.zeros((k, width), np.int32)
            slots = np.full((k,), self.slots, np.int32)  # padding rows: out of range, dropped
            for j, (slot, context) in enumerate(rows):
                tokens[j, :len(context) - 1] = context[:-1]
                slots[j] = slot
            with use_mesh(self.mesh, rows_over_context=True):
                self._cache, experts = _prefill_jit(self.graphdef, self.state, self._cache, jnp.asarray(tokens),
                                                    jnp.asarray(slots))
            experts = compact(jax.device_get(experts), self.config.num_experts)  # [K W L X]
            for j, (slot, context) in enumerate(rows):
                self._active[slot].context_routes = experts[j, :len(context) - 1]
        self.stats["prefilled"] += len(todo)

    def _decode_chunk(self) -> list[Output]:
        b = self.slots
        allowance = np.zeros((b,), np.int32)
        temperature = np.ones((b,), np.float32)
        top_p = np.ones((b,), np.float32)
        stop = np.full((b, MAX_STOP_IDS), -1, np.int32)
        for i, s in enumerate(self._active):
            if s is None:
                continue
            sp = s.request.sampling
            allowance[i] = s.request.remaining - s.emitted
            temperature[i], top_p[i] = sp.temperature, sp.top_p
            stop[i, :len(sp.stop_ids)] = sp.stop_ids
        key = jax.random.fold_in(self._key, self._calls)
        self._calls += 1
        with use_mesh(self.mesh, rows_over_context=True):
            if self.zero_mismatch:  # the trainer's full forward over the window each step; the cache is not read
                contexts = [None if s is None else np.concatenate([s.request.prompt, s.request.generated, *s.tokens])
                            for s in self._active]
                toks, lps, routes, emitted, stopped, last, pos = zero_mismatch_decode(
                    self.graphdef, self.state, contexts, self.max_context, self.zero_mismatch_rows, allowance,
                    temperature, top_p, stop, key, self.decode_chunk)
            else:
                toks, lps, routes, emitted, stopped, last, pos, self._cache = _decode_jit(
                    self.graphdef, self.state, self._cache, jnp.asarray(self._last), jnp.asarray(self._pos),
                    jnp.asarray(allowance), jnp.asarray(temperature), jnp.asarray(top_p), jnp.asarray(stop), key,
                    self.decode_chunk, bool(np.any(top_p < 1)))
        toks, lps, routes, emitted, stopped, last, pos = jax.device_get((toks, lps, routes, emitted, stopped, last,
                                                                         pos))
        self._last, self._pos = np.array(last), np.array(pos)
        finished = []
        for i, s in enumerate(self._active):
            if s is None:
                continue
            n = int(emitted[i])
            s.tokens.append(toks[i, :n])
            s.logprobs.append(lps[i, :n])
            s.versions.append(np.full((n,), self.version, np.int32))
            s.routes.append(compact(routes[i, :n], self.config.num_experts))
            s.emitted += n
            self.stats["tokens"] += n
            if stopped[i] or s.emitted >= s.request.remaining:
                finished.append(self._output(s, "stop" if stopped[i] else "length"))
                self._active[i] = None
        return finished

    @staticmethod
    def _output(s: _Slot, finish: str) -> Output:
        def cat(xs, dt):
            return np.concatenate(xs).astype(dt) if xs else np.zeros((0,), dt)

        routes = np.concatenate(s.routes) if s.routes else None
        return Output(s.request.id, cat(s.tokens, np.int32), cat(s.logprobs, np.float32),
                      cat(s.versions, np.int32), finish, routes=routes, context_routes=s.context_routes)


def run_to_completion(engine, requests: Sequence[Request], max_steps: int = 1_000_000) -> dict[str, Output]:
    """Submits `requests` and steps the engine until each has an output (tests, benchmarks, synchronous use)."""
    engine.submit(requests)
    done: dict[str, Output] = {}
    for _ in range(max_steps):
        if len(done) == len(requests):
            return done
        for o in engine.step():
            done[o.id] = o
    raise RuntimeError(f"engine did not finish {len(requests) - len(done)} requests in {max_steps} steps")

