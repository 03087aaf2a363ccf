"""GRPO group-normalised advantages (Shao et al. 2024, DeepSeekMath), one value per response, same for every token.

std is the population std (ddof=0, as `np.std`): it is defined for a group of one, where verl / TRL's unbiased
torch std (ddof=1) is NaN; the two differ by a factor sqrt(G / (G - 1)). A group whose rewards are all identical gets
advantage exactly 0 (tested for equality, not left to rounding of R - mean).
Dimension letters: P prompts (groups), G samples per prompt, N responses (flattened), B S as in `ringjax.typing`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ringjax.losses.config import LossConfig
from ringjax.typing import Array, Bool, Float, Int


def grpo_advantages(rewards: Float[Array, "P G"], *, scale_by_std: bool = True,
                    eps: float = 1e-6) -> Float[Array, "P G"]:
    """A = (R - mean_G R) / (std_G R + eps), or R - mean_G R when `scale_by_std` is False."""
    rewards = rewards.astype(jnp.float32)
    centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)  # [P G]
    if scale_by_std:
        centred = centred / (jnp.std(rewards, axis=1, keepdims=True) + eps)
    same = jnp.all(rewards == rewards[:, :1], axis=1, keepdims=True)  # [P 1]
    return jnp.where(same, 0.0, centred)


def grpo_advantages_flat(rewards: Float[Array, " N"], group_ids: Int[Array, " N"], num_groups: int, *,
                         scale_by_std: bool = True, eps: float = 1e-6) -> Float[Array, " N"]:
    """Same as `grpo_advantages` for responses listed flat with their group (prompt) id in [0, num_groups)."""
    rewards = rewards.astype(jnp.float32)
    count = jax.ops.segment_sum(jnp.ones_like(rewards), group_ids, num_groups)  # [P]
    mean = (jax.ops.segment_sum(rewards, group_ids, num_groups) / jnp.maximum(count, 1))[group_ids]  # [N]
    centred = rewards - mean
    if scale_by_std:
        var = jax.ops.segment_sum(centred**2, group_ids, num_groups) / jnp.maximum(count, 1)  # [P]
        centred = centred / (jnp.sqrt(var)[group_ids] + eps)
    same = (jax.ops.segment_max(rewards, group_ids, num_groups)
            == jax.ops.segment_min(rewards, group_ids, num_groups))[group_ids]  # [N]
    return jnp.where(same, 0.0, centred)


def token_advantages(advantages: Float[Array, " B"], mask: Bool[Array, "B S"] | Float[Array, "B S"]
                     ) -> Float[Array, "B S"]:
    """Broadcast one advantage per response to its valid tokens; 0 on padding."""
    return jnp.where(mask.astype(bool), advantages[:, None].astype(jnp.float32), 0.0)


def _grpo(rewards: Float[Array, "P G"], cfg: LossConfig) -> Float[Array, "P G"]:
    return grpo_advantages(rewards, scale_by_std=True, eps=cfg.adv_eps)


def _grpo_no_std(rewards: Float[Array, "P G"], cfg: LossConfig) -> Float[Array, "P G"]:
    return grpo_advantages(rewards, scale_by_std=False, eps=cfg.adv_eps)


ADVANTAGES = {"grpo": _grpo, "grpo_no_std": _grpo_no_std}


def compute_advantages(rewards: Float[Array, "P G"], cfg: LossConfig) -> Float[Array, "P G"]:
    """The advantage estimator `cfg.advantage` applied to a [prompts, samples] reward table."""
    return ADVANTAGES[cfg.advantage](rewards, cfg)
