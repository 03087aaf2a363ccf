"""The train step: one jitted function over the TrainState, donated, with explicit shardings.

    new_state, sums = train_step(state, batch)

`batch` is `stack_micro_batches(...)` on device: [N, R, S] tokens / positions / segment ids and [N, R, S-1]
loss mask, logp_infer, advantages, token weights, policy versions (and [N, R, S, L, X] engine expert ids `routes`
when the engine recorded them). The step first recomputes `logp_old` of every micro-batch with the chunked log-prob
path under the pre-update weights (and measures routing disagreement and the log-prob gap by policy lag there,
`ringjax.trainer.diagnostics`), then scans over the micro-batches adding float32 gradients, and applies ONE
optimiser update. With router replay both passes route every token through the engine's recorded experts.
A non-finite loss or gradient norm keeps params and optimiser state exactly as they were (the step and skip
counters still advance), so a bad batch cannot corrupt a run.

`sums` are additive statistics (keys ending in `_max` are maxima); `finalize_metrics` turns them into the
logged means on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ringjax.losses import LossConfig, policy_loss
from ringjax.model import Ling
from ringjax.model.logprobs import token_logprobs
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
    logp, entropy = token_logprobs(out.hidden[:, :-1], model.head_weight(), mb["tokens"][:, 1:],
                                   model.config.compute.logprob_chunk, temperature)
    aux = {"load_balance": jnp.mean(out.aux.load_balance), "z_loss": jnp.mean(out.aux.z_loss)}
    return logp, entropy, aux, out.aux.chosen


def sequence_logprobs(model: Ling, mb: Batch, temperature: float = 1.0, replay: bool = False
                      ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(logp [R S-1] of tokens[:, 1:], entropy [R S-1], router aux {load_balance, z_loss} means). With `replay`,
    every token uses the engine's experts `mb["routes"]` (router replay)."""
    return _forward(model, mb, temperature, replay)[:3]


def rl_loss_fn(cfg: LossConfig, temperature: float = 1.0, router_replay: bool = False) -> LossFn:
    """IcePop / GRPO policy loss of one micro-batch, its additive statistics as aux."""

    def loss_fn(model: Ling, mb: Batch, logp_old: jax.Array, n_micro: int):
        logp, entropy, aux = sequence_logprobs(model, mb, temperature, router_replay)
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
                "binary_kl_sum": m["binary_kl_mean"] * n, "binary_kl_max": m["binary_kl_max"]}
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


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn, *,
                    temperature: float = 1.0, state_shardings: TrainState | None = None,
                    recompute_logp_old: bool = True, router_replay: bool = False):
    """The jitted, state-donating step; `state_shardings` (e.g. from `abstract_train_state`) pins the layout.

    `loss_fn(model, micro_batch, logp_old, n_micro) -> (loss, additive sums incl. "loss")`. Without
    `recompute_logp_old` (SFT) the extra forward pass is skipped and `logp_old` is zeros. `router_replay` must
    match the loss function's (`rl_loss_fn(..., router_replay=...)`): logp_old is taken under the same routing."""

    def step(state: TrainState, batch: Batch):
        def model_of(params):
            return merge_model(graphdef, params, state.frozen)

        n_micro = batch["tokens"].shape[0]
        diag = {}
        if recompute_logp_old:
            def old(mb):
                logp, _, _, chosen = _forward(model_of(state.params), mb, temperature, router_replay)
                routing = {}
                if "routes" in mb and chosen.shape[0]:  # per micro-batch: no [N L R S X] id tensor is kept
                    routing = diagnostics.routing_sums(chosen, mb["routes"], mb["loss_mask"].astype(bool))
                return logp, routing

            logp_old, routing = jax.lax.stop_gradient(jax.lax.map(old, batch))  # [N R S-1], {key: [N]}
            diag.update({k: jnp.sum(v) for k, v in routing.items()})
            mask = batch["loss_mask"].astype(bool)
            if "versions" in batch:
                diag.update(diagnostics.gap_sums(logp_old, batch["logp_infer"], batch["versions"], state.step, mask))
        else:
            logp_old = jnp.zeros(batch["loss_mask"].shape, jnp.float32)

        def micro(grads, xs):
            mb, old = xs
            (_, sums), g = jax.value_and_grad(lambda p: loss_fn(model_of(p), mb, old, n_micro), has_aux=True)(
                state.params)
            return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g), sums

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        grads, sums = jax.lax.scan(micro, zeros, (batch, logp_old))
        sums = {k: jnp.max(v) if k.endswith("_max") else jnp.sum(v) for k, v in sums.items()}
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

        new_state = TrainState(keep(params, state.params), state.frozen, keep(opt_state, state.opt_state),
                               state.step + 1, state.skipped + (~ok).astype(jnp.int32), state.rng)
        sums.update(grad_norm=grad_norm, update_skipped=(~ok).astype(jnp.float32), **diag)
        return new_state, sums

    if state_shardings is None:
        return jax.jit(step, donate_argnums=0)
    shardings = jax.tree.map(lambda a: a.sharding, state_shardings)
    return jax.jit(step, donate_argnums=0, out_shardings=(shardings, None))


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
