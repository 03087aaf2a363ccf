"""Token -> expert routing of Ling 1.0 and Ling 2.0 (pure, all float32).

v1: `softmax(x W^T)`, top-k, renormalised when `norm_topk_prob`.
v2: `s = sigmoid(x W^T)`; choose with `s + expert_bias`, limited to the `topk_group` groups whose
    two best biased scores sum highest; weight by the UNBIASED `s` of the chosen experts, renormalised
    (eps 1e-20) and scaled by `routed_scaling_factor`. Groups left out are masked with -inf as SGLang
    does (the HF reference fills 0.0; the two agree unless biased scores are negative).
Also returns the router load-balance and z-loss statistics the trainer may regularise with.

Router replay (R3, arXiv 2510.11370): with `replay` ids the token uses those experts instead of its own top-k (a row
holding any negative id keeps its own choice). Their weights are still this router's gate values of those experts,
normalised as the architecture does, so the router keeps receiving gradient; `chosen` is always the router's own
top-k, which routing diagnostics compare with the engine's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ringjax.model.config import LingConfig
from ringjax.typing import Array, Float, Int


class Routing(NamedTuple):
    weights: Float[Array, "T X"]
    experts: Int[Array, "T X"]  # the experts used (replayed ones where given)
    chosen: Int[Array, "T X"]  # the router's own top-k
    load_balance: Float[Array, ""]  # E * sum_e fraction_e * mean_prob_e (Switch / GShard form)
    z_loss: Float[Array, ""]  # mean logsumexp(logits)^2


def _replayed(chosen: Int[Array, "T X"], replay: Int[Array, "T X"] | None) -> Int[Array, "T X"]:
    """`replay` where a row holds only valid (>= 0) ids, else the router's own choice."""
    if replay is None:
        return chosen
    replay = replay.astype(jnp.int32)
    return jnp.where(jnp.all(replay >= 0, axis=-1, keepdims=True), replay, chosen)


def route(x: Float[Array, "T H"], router: Float[Array, "H E"], expert_bias: Float[Array, " E"] | None,
          cfg: LingConfig, replay: Int[Array, "T X"] | None = None) -> Routing:
    logits = x.astype(jnp.float32) @ router.astype(jnp.float32)  # [T E]
    k = cfg.num_experts_per_tok
    if cfg.score_function == "softmax":
        scores = jax.nn.softmax(logits, axis=-1)  # [T E]
        _, chosen = jax.lax.top_k(scores, k)  # [T X]
        experts = _replayed(chosen, replay)
        weights = jnp.take_along_axis(scores, experts, axis=-1)  # [T X]
        if cfg.norm_topk_prob:
            weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    else:
        scores = jax.nn.sigmoid(logits)  # [T E]
        choice = scores + expert_bias.astype(jnp.float32) if expert_bias is not None else scores
        if cfg.n_group > 1:
            t, e = choice.shape
            grouped = choice.reshape(t, cfg.n_group, e // cfg.n_group)  # [T groups E/groups]
            group_score = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [T groups]
            _, keep = jax.lax.top_k(group_score, cfg.topk_group)  # [T topk_group]
            group_mask = jnp.zeros_like(group_score, dtype=bool).at[jnp.arange(t)[:, None], keep].set(True)
            choice = jnp.where(group_mask[:, :, None], grouped, -jnp.inf).reshape(t, e)
        _, chosen = jax.lax.top_k(choice, k)  # [T X]
        experts = _replayed(chosen, replay)
        weights = jnp.take_along_axis(scores, experts, axis=-1)  # unbiased scores [T X]
        if cfg.norm_topk_prob and k > 1:
            weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    weights = weights * cfg.routed_scaling_factor
    probs = jax.nn.softmax(logits, axis=-1) if cfg.score_function == "softmax" else (
        scores / jnp.sum(scores, axis=-1, keepdims=True))
    fraction = jnp.mean(jnp.sum(jax.nn.one_hot(experts, cfg.num_experts), axis=1), axis=0) / k  # [E]
    load_balance = cfg.num_experts * jnp.sum(fraction * jnp.mean(probs, axis=0))
    z_loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)
    return Routing(weights, experts.astype(jnp.int32), chosen.astype(jnp.int32), load_balance, z_loss)
