"""The train step: ONE optimiser update from a step's micro-batches, compiled once per configuration.

    new_state, sums = train_step(state, train_step.inputs(stack_micro_batches(...), mesh))

Each micro-batch holds [R, S] tokens / positions / segment ids and [R, S-1] loss mask, logp_infer, advantages, token
weights, policy versions (and [R, S, L, X] engine expert ids `routes` when the engine recorded them). For every
micro-batch the step takes `logp_old`, the pre-update policy's log-probs (measuring routing disagreement and the
log-prob gap by policy lag there, `ringjax.trainer.diagnostics`), and adds its float32 gradient; then it applies ONE
optimiser update. Since the weights do not change within a step, `logp_old` is by default the stop-gradient of the
gradient pass's own log-probs (`logp_old="inline"`, one forward pass less: a quarter of the step's FLOPs); `"pass"`
recomputes it in a separate forward with the scoring code the zero-mismatch engine shares, bit for bit
(`rollout.zero_mismatch`). The micro-batch count of a step varies with packing; no compiled shape depends on it
(`TrainStep`). With router replay every pass of the step (the gradient pass, and the separate logp_old pass where
one runs) routes every token through the engine's recorded experts. A non-finite loss or gradient norm keeps params
and optimiser state exactly as they were (the step and skip counters still advance), so a bad batch cannot corrupt a
run.

`sums` are additive statistics (keys ending in `_max` are maxima); `finalize_metrics` turns them into the
logged means on the host.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ringjax.losses import LossConfig, policy_loss
from ringjax.model import Ling
from ringjax.model.logprobs import next_token_logprobs
from ringjax.sharding import BATCH_AXES, batch_shards
from ringjax.trainer import diagnostics
from ringjax.trainer.state import TrainState, merge_model

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Ling, Batch, jax.Array, int], tuple[jax.Array, dict[str, jax.Array]]]


def _forward(model: Ling, mb: Batch, temperature: float, replay: bool):
    """(logp [R S-1], entropy [R S-1], router aux means, the router's own top-k [L R S X])."""
    routes = mb["routes"] if replay else None
    if replay and routes is None:
        raise ValueError("rl.router_replay=replay needs the engine's routing records in the batch ('routes')")
    out = model(mb["tokens"], mb["positions"], mb["segment_ids"], routes=routes)
    logp, entropy = next_token_logprobs(out.hidden, model.head_weight(), mb["tokens"],
                                        model.config.compute.logprob_chunk, temperature,
                                        model.config.compute.logprob_vocab_chunk)
    aux = {"load_balance": jnp.mean(out.aux.load_balance), "z_loss": jnp.mean(out.aux.z_loss)}
    return logp, entropy, aux, out.aux.chosen


def sequence_logprobs(model: Ling, mb: Batch, temperature: float = 1.0, replay: bool = False
                      ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(logp [R S-1] of tokens[:, 1:], entropy [R S-1], router aux {load_balance, z_loss} means). With `replay`,
    every token uses the engine's experts `mb["routes"]` (router replay)."""
    return _forward(model, mb, temperature, replay)[:3]


def old_policy_sums(logp_old: jax.Array, chosen: jax.Array, mb: Batch, step: jax.Array) -> dict[str, jax.Array]:
    """Diagnostics of the pre-update policy: routing disagreement with the engine, log-prob gap by policy lag."""
    mask = mb["loss_mask"].astype(bool)
    sums = {}
    if "routes" in mb and chosen.shape[0]:
        sums.update(diagnostics.routing_sums(jax.lax.stop_gradient(chosen), mb["routes"], mask))
    if "versions" in mb:
        sums.update(diagnostics.gap_sums(logp_old, mb["logp_infer"], mb["versions"], step, mask))
    return sums


def rl_loss_fn(cfg: LossConfig, temperature: float = 1.0, router_replay: bool = False) -> LossFn:
    """IcePop / GRPO policy loss of one micro-batch, its additive statistics as aux. `logp_old` None: the
    stop-gradient of this pass's log-probs, with the old-policy diagnostics (the step is in `mb["step"]`)."""

    def loss_fn(model: Ling, mb: Batch, logp_old: jax.Array | None, n_micro: int):
        logp, entropy, aux, chosen = _forward(model, mb, temperature, router_replay)
        old_sums = {}
        if logp_old is None:
            logp_old = jax.lax.stop_gradient(logp)
            old_sums = old_policy_sums(logp_old, chosen, mb, mb["step"])
        aux = {k: v / n_micro for k, v in aux.items()}  # the step's router terms: mean over micro-batches
        loss, m = policy_loss(logp, logp_old, mb["logp_infer"], mb["advantages"], mb["loss_mask"], cfg,
                              logp_ref=mb.get("logp_ref"), entropy=entropy, aux=aux,
                              segment_ids=mb["segment_ids"][:, 1:], token_weights=mb["token_weights"])
        n = m["valid_tokens"]
        masked = m["icepop_masked_frac"] * n
        sums = {"tokens": n, "loss": loss, "pg_loss": m["pg_loss"], "icepop_masked": masked,
                "correction_zero": m["correction_zero_frac"] * n, "logp_diff_sum": m["logp_diff_mean"] * n,
                "logp_diff_max": m["logp_diff_max"], "kl_infer_train_sum": m["kl_infer_train"] * n,
                "clip_sum": m["clip_frac"] * n, "ratio_sum": m["ratio_mean"] * n, "logp_sum": m["logp_mean"] * n,
                "entropy_sum": m["entropy_mean"] * n, "entropy_masked_sum": m["entropy_masked_mean"] * masked,
                "router_load_balance": m["router_load_balance"], "router_z_loss": m["router_z_loss"],
                "kpop_masked_sum": m["kpop_masked_frac"] * n, "seq_masked_tokens_sum": m["seq_masked_frac"] * n,
                "seq_masked_seqs": m["seq_masked_seqs"], "num_seqs": m["num_seqs"],
                "binary_kl_sum": m["binary_kl_mean"] * n, "binary_kl_max": m["binary_kl_max"], **old_sums}
        if "kl_ref" in m:
            sums["kl_ref"] = m["kl_ref"]  # already aggregated with the step's token weights: additive
        return loss, sums

    return loss_fn


def make_score_fn(graphdef: nnx.GraphDef, temperature: float = 1.0, router_replay: bool = False):
    """Jitted log-probs [N R S-1] of a stacked batch under (params, frozen), e.g. of the reference policy."""

    @jax.jit
    def score(params: nnx.State, frozen: nnx.State, batch: Batch) -> jax.Array:
        model = merge_model(graphdef, params, frozen)
        return jax.lax.map(lambda mb: sequence_logprobs(model, mb, temperature, router_replay)[0], batch)

    return score


def finalize_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Host-side means of the step's additive statistics."""
    s = {k: float(v) for k, v in sums.items()}
    tokens = max(s.get("tokens", 0.0), 1.0)
    out = {k: v for k, v in s.items() if not k.endswith("_sum") and k not in ("icepop_masked", "correction_zero")
           and not diagnostics.is_diagnostic(k)}
    out.update(diagnostics.finalize(s))
    for key in ("logp_diff", "kl_infer_train", "clip", "ratio", "logp", "entropy", "binary_kl"):
        if f"{key}_sum" in s:
            out[f"{key}_mean" if key not in ("clip",) else "clip_frac"] = s[f"{key}_sum"] / tokens
    for key in ("kpop_masked", "seq_masked_tokens"):  # what each rule masks (or would mask under another mode)
        if f"{key}_sum" in s:
            out[f"{key.removesuffix('_tokens')}_frac"] = s[f"{key}_sum"] / tokens
    if "seq_masked_seqs" in s:
        out["seq_masked_seq_frac"] = s["seq_masked_seqs"] / max(s.get("num_seqs", 0.0), 1.0)
    if "icepop_masked" in s:
        out["icepop_masked_frac"] = s["icepop_masked"] / tokens
        out["correction_zero_frac"] = s["correction_zero"] / tokens
        out["entropy_masked_mean"] = s["entropy_masked_sum"] / max(s["icepop_masked"], 1.0)
    return out


class StepInput(NamedTuple):
    """A step's micro-batches on device, in chunks of the step's fixed `chunk` size (`TrainStep.inputs`)."""

    chunks: list[dict[str, jax.Array]]  # [K, R, ...] each; the last one filled up with empty micro-batches
    micro_batches: int  # real micro-batches (the empty ones are skipped, never computed)


LOGP_OLD = ("inline", "pass", "none")  # where the step's logp_old comes from (module docstring)


class TrainStep:
    """`(state, inputs) -> (new_state, sums)`: ONE optimiser update from any number of micro-batches.

    Two jitted functions do the work: `accumulate` scans over one chunk of `chunk` micro-batches (per micro-batch:
    logp_old under the pre-update weights, its diagnostics, loss and gradient added to the float32 accumulator;
    an empty micro-batch, one without a loss token, is skipped by a `lax.cond`), then `apply` takes the gradient
    norm, checks for non-finite values and applies the optimiser update (the state donated). A step of N
    micro-batches runs ceil(N / chunk) `accumulate` calls; no compiled shape depends on N, so a run compiles each
    function once however its packing varies (`compiles` counts the traces). `chunk` (default: the first step's
    micro-batch count) trades calls for padding: on CPU a scan over 4 micro-batches in one call is a fifth faster
    than one call each (bench-tiny, `benchmarks/train_bench.py`). The weights do not change between the calls of
    a step, so every micro-batch's logp_old is that of the pre-update policy (`logp_old`: module docstring)."""

    def __init__(self, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn, *,
                 temperature: float, state_shardings: TrainState | None, logp_old: str,
                 router_replay: bool, chunk: int | None = None):
        if chunk is not None and chunk < 1:
            raise ValueError(f"train step chunk={chunk} must be >= 1")
        if logp_old not in LOGP_OLD:
            raise ValueError(f"train step logp_old={logp_old!r}; expected one of {LOGP_OLD}")
        self.chunk = chunk
        self.compiles = collections.Counter()
        self._graphdef, self._tx, self._loss_fn = graphdef, tx, loss_fn
        self._temperature, self._logp_old, self._replay = temperature, logp_old, router_replay
        shardings = None if state_shardings is None else jax.tree.map(lambda a: a.sharding, state_shardings)
        grad_shardings = None if shardings is None else shardings.params
        self.accumulate = jax.jit(self._accumulate, donate_argnums=(3, 4),
                                  out_shardings=None if shardings is None else (grad_shardings, None))
        self.apply = jax.jit(self._apply, donate_argnums=0,
                             out_shardings=None if shardings is None else (shardings, None))
        self._zeros = jax.jit(lambda params: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
                              out_shardings=grad_shardings)
        self._sums_shapes = {}

    def inputs(self, batch: Mapping[str, np.ndarray], mesh: Mesh | None = None) -> StepInput:
        """Host micro-batches [N, R, ...] (`stack_micro_batches`) to device chunks of `chunk` micro-batches."""
        n = next(iter(batch.values())).shape[0]
        if n < 1:
            raise ValueError("a train step needs at least one micro-batch")
        self.chunk = self.chunk or n
        pad = -n % self.chunk
        if pad:
            batch = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        chunks = [device_batch({k: v[i:i + self.chunk] for k, v in batch.items()}, mesh)
                  for i in range(0, n + pad, self.chunk)]
        return StepInput(chunks, n)

    def _model(self, params, frozen):
        return merge_model(self._graphdef, params, frozen)

    def _micro(self, params, frozen, step, mb, n_micro):
        """(grads, sums) of one micro-batch; logp_old (and its diagnostics) under `params`, without gradient."""
        sums = {}
        if self._logp_old == "pass":
            logp_old, _, _, chosen = _forward(self._model(params, frozen), mb, self._temperature, self._replay)
            logp_old = jax.lax.stop_gradient(logp_old)
            sums.update(old_policy_sums(logp_old, chosen, mb, step))
        elif self._logp_old == "inline":
            logp_old, mb = None, {**mb, "step": step}
        else:
            logp_old = jnp.zeros(mb["loss_mask"].shape, jnp.float32)
        (_, loss_sums), grads = jax.value_and_grad(
            lambda p: self._loss_fn(self._model(p, frozen), mb, logp_old, n_micro), has_aux=True)(params)
        return grads, {**sums, **loss_sums}

    def _accumulate(self, params, frozen, step, grads, sums, chunk, n_micro):
        self.compiles["accumulate"] += 1  # runs only when jax traces: once per distinct shape

        def add(carry, mb):
            g, s = self._micro(params, frozen, step, mb, n_micro)
            grads, sums = carry
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
            return grads, {k: jnp.maximum(v, s[k]) if k.endswith("_max") else v + s[k] for k, v in sums.items()}

        def body(carry, mb):  # an empty micro-batch (chunk padding) costs nothing
            return jax.lax.cond(jnp.any(mb["loss_mask"]), add, lambda c, _: c, carry, mb), None

        return jax.lax.scan(body, (grads, sums), chunk)[0]

    def _apply(self, state: TrainState, grads, sums):
        self.compiles["apply"] += 1
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)
        updates, opt_state = self._tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

        new_state = TrainState(keep(params, state.params), state.frozen, keep(opt_state, state.opt_state),
                               state.step + 1, state.skipped + (~ok).astype(jnp.int32), state.rng)
        return new_state, {**sums, "grad_norm": grad_norm, "update_skipped": (~ok).astype(jnp.float32)}

    def _start(self, state: TrainState, chunk: Batch):
        """Zero gradient accumulator and sums (maxima start at 0: they are of values >= 0)."""
        mb = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in chunk.items()}
        key = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in mb.items()))
        if key not in self._sums_shapes:  # the sums' structure (it depends on the batch's fields), traced once
            n = jax.ShapeDtypeStruct((), jnp.int32)
            self._sums_shapes[key] = jax.eval_shape(self._micro, state.params, state.frozen, state.step, mb, n)[1]
        return self._zeros(state.params), {k: jnp.zeros(v.shape, v.dtype) for k, v in self._sums_shapes[key].items()}

    def compile(self, state: TrainState, inputs: StepInput) -> None:
        """Compiles both functions ahead of time for this state and chunk shape (e.g. outside a timed region); later
        calls run the compiled executables, so every chunk must have this shape."""
        grads, sums = self._start(state, inputs.chunks[0])
        n = jnp.zeros((), jnp.int32)
        self.accumulate = self.accumulate.lower(state.params, state.frozen, state.step, grads, sums,
                                                inputs.chunks[0], n).compile()
        self.apply = self.apply.lower(state, grads, sums).compile()

    def __call__(self, state: TrainState, inputs: StepInput) -> tuple[TrainState, dict[str, jax.Array]]:
        n_micro = jnp.asarray(inputs.micro_batches, jnp.int32)
        grads, sums = self._start(state, inputs.chunks[0])
        for chunk in inputs.chunks:
            grads, sums = self.accumulate(state.params, state.frozen, state.step, grads, sums, chunk, n_micro)
        return self.apply(state, grads, sums)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn, *,
                    temperature: float = 1.0, state_shardings: TrainState | None = None,
                    logp_old: str = "inline", router_replay: bool = False, chunk: int | None = None
                    ) -> TrainStep:
    """The train step (`TrainStep`); `state_shardings` (e.g. from `abstract_train_state`) pins the layout; `chunk`
    micro-batches run per compiled call (default: the first step's count).

    `loss_fn(model, micro_batch, logp_old, n_micro) -> (loss, additive sums incl. "loss")`, `n_micro` the step's
    micro-batch count (a traced scalar). `logp_old`: "inline" (default) passes None, the loss takes its own
    log-probs' stop-gradient (`rl_loss_fn` does); "pass" a separate forward's; "none" (SFT) zeros.
    `router_replay` must match the loss function's (`rl_loss_fn(..., router_replay=...)`): logp_old is taken under
    the same routing."""
    return TrainStep(graphdef, tx, loss_fn, temperature=temperature, state_shardings=state_shardings,
                     logp_old=logp_old, router_replay=router_replay, chunk=chunk)


def device_batch(batch: Mapping[str, np.ndarray], mesh: Mesh | None = None) -> dict[str, jax.Array]:
    """Host arrays [N, R, ...] to global device arrays, rows R split over the batch mesh axes when they divide.

    Every process passes the same host batch (multi-host: each device reads its own slice of it)."""
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
    rows = next(iter(batch.values())).shape[1]
    split = axes if axes and rows % batch_shards(mesh) == 0 else None
    out = {}
    for k, v in batch.items():
        sharding = NamedSharding(mesh, PartitionSpec(None, split))
        out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
    return out

