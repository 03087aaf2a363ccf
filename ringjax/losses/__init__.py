"""The RL objective (docs/architecture.md): GRPO advantages, PPO clip, train-inference corrections (IcePop, KPop,
sequence masks, TIS), C3PO aggregation."""

from ringjax.losses.advantages import (ADVANTAGES, compute_advantages, grpo_advantages, grpo_advantages_flat,
                                       token_advantages)
from ringjax.losses.aggregation import AGGREGATIONS, masked_mean, sequence_ids
from ringjax.losses.config import LossConfig
from ringjax.losses.correction import CORRECTIONS, icepop_weight, in_band, train_inference_ratio
from ringjax.losses.policy import k3, policy_loss, ppo_clipped_term

__all__ = ["ADVANTAGES", "AGGREGATIONS", "CORRECTIONS", "LossConfig", "compute_advantages", "grpo_advantages",
           "grpo_advantages_flat", "icepop_weight", "in_band", "k3", "masked_mean", "policy_loss", "ppo_clipped_term",
           "sequence_ids", "token_advantages", "train_inference_ratio"]
