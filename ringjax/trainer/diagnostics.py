"""Mismatch diagnostics of a train step (pure, on device): routing disagreement and log-prob gap by policy lag.

Routing: the engine's record (`rollout.routes`, replayed into the batch as `routes` [R S L X], -1 where unknown)
against the trainer's own top-k (`LayerAux.chosen` of the pass that gives logp_old, under the pre-update weights) at
every position that produces a trained token. Per MoE layer: how many tokens choose a different expert SET, and
the mean set overlap |engine ∩ trainer| / k. Under router replay the trainer still reports its own choice, so the
metric measures what replay corrects.

Gap: |logp_old - logp_infer| split by how many policy versions lie between the token's sampler and the weights
being trained (0: on-policy, 1: sampled by the previous policy, ...), the staleness C3PO++ retention brings in.

All values are additive sums over micro-batches (`finalize_metrics` divides on the host).
"""

from __future__ import annotations

import jax.numpy as jnp

from ringjax.typing import Array, Bool, Float, Int

GAPS = (0, 1, 2)  # the last bucket holds every lag >= 2


def routing_sums(chosen: Int[Array, "L R S X"], routes: Int[Array, "R S L X"],
                 mask: Bool[Array, "R S1"]) -> dict[str, Float[Array, ""]]:
    """{routing_tokens, routing_differ_l{i}, routing_overlap_l{i}} of one micro-batch, over masked positions with a
    known record. `mask[..., j]` marks the trained token predicted at position j (S1 = S - 1 columns)."""
    s1 = mask.shape[-1]
    mine = jnp.moveaxis(chosen, 0, 2)[:, :s1]  # [R S1 L X]
    theirs = routes[:, :s1].astype(jnp.int32)  # [R S1 L X]
    known = mask & jnp.all(theirs >= 0, axis=(-1, -2))  # [R S1]
    same = jnp.any(mine[..., :, None] == theirs[..., None, :], axis=-1)  # [R S1 L X]: each of mine is in theirs
    overlap = jnp.mean(same.astype(jnp.float32), axis=-1)  # [R S1 L]
    differ = overlap < 1.0  # top-k ids are distinct, so equal sets <=> full overlap
    w = known[..., None].astype(jnp.float32)
    out = {"routing_tokens": jnp.sum(known).astype(jnp.float32)}
    per_differ = jnp.sum(differ * w, axis=(0, 1))  # [L]
    per_overlap = jnp.sum(overlap * w, axis=(0, 1))  # [L]
    for i in range(mine.shape[-2]):
        out[f"routing_differ_l{i}"] = per_differ[i]
        out[f"routing_overlap_l{i}"] = per_overlap[i]
    return out


def gap_sums(logp_old: Float[Array, "..."], logp_infer: Float[Array, "..."], versions: Int[Array, "..."],
             step: Int[Array, ""], mask: Bool[Array, "..."]) -> dict[str, Float[Array, ""]]:
    """{gap{g}_tokens, gap{g}_logp_diff_sum, gap{g}_logp_diff_max} of |logp_old - logp_infer| by policy lag."""
    mask = mask & (versions >= 0)  # -1: version unknown
    lag = jnp.minimum(step - versions, GAPS[-1])
    diff = jnp.where(mask, jnp.abs(logp_old - logp_infer), 0.0)
    out = {}
    for g in GAPS:
        sel = mask & (lag == g)
        out[f"gap{g}_tokens"] = jnp.sum(sel).astype(jnp.float32)
        out[f"gap{g}_logp_diff_sum"] = jnp.sum(jnp.where(sel, diff, 0.0))
        out[f"gap{g}_logp_diff_max"] = jnp.max(jnp.where(sel, diff, 0.0))
    return out


def finalize(sums: dict[str, float]) -> dict[str, float]:
    """Host-side means of the sums above: routing_disagree(_l{i}), routing_overlap(_l{i}), logp_diff_gap{g}(_max),
    tokens_gap{g}. Keys of absent groups are left out."""
    out = {}
    n = sums.get("routing_tokens", 0.0)
    layers = sorted(int(k.rsplit("_l", 1)[1]) for k in sums if k.startswith("routing_differ_l"))
    if layers and n > 0:
        for i in layers:
            out[f"routing_disagree_l{i}"] = sums[f"routing_differ_l{i}"] / n
            out[f"routing_overlap_l{i}"] = sums[f"routing_overlap_l{i}"] / n
        out["routing_disagree"] = sum(out[f"routing_disagree_l{i}"] for i in layers) / len(layers)
        out["routing_overlap"] = sum(out[f"routing_overlap_l{i}"] for i in layers) / len(layers)
        out["routing_tokens"] = n
    for g in GAPS:
        if f"gap{g}_tokens" in sums:
            t = sums[f"gap{g}_tokens"]
            out[f"tokens_gap{g}"] = t
            if t > 0:
                out[f"logp_diff_gap{g}"] = sums[f"gap{g}_logp_diff_sum"] / t
                out[f"logp_diff_gap{g}_max"] = sums[f"gap{g}_logp_diff_max"]
    return out


def is_diagnostic(key: str) -> bool:
    """Raw sums that `finalize` turns into metrics (not logged as they are)."""
    return key.startswith(("routing_differ_l", "routing_overlap_l", "gap")) or key == "routing_tokens"
