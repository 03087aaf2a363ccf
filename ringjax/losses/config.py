"""Configuration of the RL objective (docs/architecture.md): one frozen dataclass, every value checked on construction.

Each string field names an entry of a small registry (name -> pure function): `advantage` in
`advantages.ADVANTAGES`, `correction` in `correction.CORRECTIONS`, `aggregation` in `aggregation.AGGREGATIONS`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

Advantage = Literal["grpo", "grpo_no_std"]
Correction = Literal["none", "tis", "icepop", "icepop_seq", "kpop", "seq_mask"]
Aggregation = Literal["c3po", "seq_mean", "token_mean"]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Knobs of `policy_loss` and `compute_advantages`.

    advantage: `grpo` = (R - mean) / (std + adv_eps) per group; `grpo_no_std` = R - mean (Dr. GRPO).
    eps_low / eps_high: PPO ratio clip band [1 - eps_low, 1 + eps_high] (Ring-lite: 0.2 / 0.2).
    correction: train-inference mismatch weight on k = pi_old / pi_infer: `none` (1), `tis` (min(k, tis_cap)),
      `icepop` (k inside [alpha, beta], else 0), `icepop_seq` (the same band on each sequence's geometric-mean k),
      `kpop` (k unless the binary KL between pi_old and pi_infer of the token exceeds kpop_bound, else 0),
      `seq_mask` (k unless the token's sequence holds a token with |log k| > seq_bound, else 0).
    alpha / beta: IcePop band (Ring-1T: 0.5 / 5.0). tis_cap: TIS truncation; 2.0 as in verl's default
      `rollout_is_threshold` and Yao et al. 2025 ("Your efficient RL framework secretly brings you off-policy RL").
    kpop_bound: kpop masks a token when max(KL(p||q), KL(q||p)) > kpop_bound, p = pi_old, q = pi_infer of the token
      as Bernoulli parameters; 0.05 is ringjax's default, not a published value. seq_bound: seq_mask drops a
      response when max_t |log k_t| > seq_bound (1.0: a factor e either way).
    aggregation: `c3po` = token sum / phi (constant budget; phi is the step's, `RLConfig.phi`, passed to the loss
      by whoever owns the step); `seq_mean` = GRPO per-sequence mean, then mean over sequences; `token_mean` =
      token sum / number of valid tokens.
    kl_coef: k3 KL to the reference policy (Ring-lite 1e-3, Ring-1T 0). entropy_coef: entropy bonus (Ring-lite 5e-4).
    load_balance_coef / z_loss_coef: router auxiliary terms (Ling 1.0: 1e-5 / 1e-7), applied to values passed in.
    """

    advantage: Advantage = "grpo"  # grpo: (R - mean) / (std + adv_eps) per group; grpo_no_std: R - mean
    adv_eps: float = 1e-6  # added to the group's reward std before dividing
    eps_low: float = 0.2  # PPO clip: the ratio is clipped below at 1 - eps_low (Ring-lite 0.2)
    eps_high: float = 0.2  # PPO clip: the ratio is clipped above at 1 + eps_high (Ring-lite 0.2)
    correction: Correction = "icepop"  # train-inference weight on k = pi_old / pi_infer: see correction.CORRECTIONS
    alpha: float = 0.5  # IcePop band low end: tokens with k < alpha are masked (Ring-1T 0.5)
    beta: float = 5.0  # IcePop band high end: tokens with k > beta are masked (Ring-1T 5.0)
    tis_cap: float = 2.0  # tis: the weight is min(k, tis_cap)
    kpop_bound: float = 0.05  # kpop: mask above this binary KL (nats); ringjax's default, not a published value
    seq_bound: float = 1.0  # seq_mask: drop a response whose max |log k| exceeds this
    aggregation: Aggregation = "c3po"  # c3po (sum / phi), seq_mean (mean of response means), token_mean (sum / tokens)
    kl_coef: float = 0.0  # weight of the k3 KL to the starting policy (Ring-lite 1e-3, Ring-1T 0)
    entropy_coef: float = 0.0  # weight of the entropy bonus (Ring-lite 5e-4)
    load_balance_coef: float = 0.0  # weight of the router load-balance loss (Ling 1.0: 1e-5)
    z_loss_coef: float = 0.0  # weight of the router z-loss (Ling 1.0: 1e-7)

    def __post_init__(self):
        for name, choices in (("advantage", Advantage), ("correction", Correction), ("aggregation", Aggregation)):
            value = getattr(self, name)
            if value not in get_args(choices):
                raise ValueError(f"loss.{name}={value!r} is not one of {get_args(choices)}")
        for name in ("adv_eps", "eps_low", "eps_high", "kl_coef", "entropy_coef", "load_balance_coef", "z_loss_coef"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ValueError(f"loss.{name}={getattr(self, name)} must be >= 0")
        if not self.eps_low < 1:
            raise ValueError(f"loss.eps_low={self.eps_low} must be < 1 (the lower clip bound 1 - eps_low must be > 0)")
        if not self.alpha > 0:
            raise ValueError(f"loss.alpha={self.alpha} must be > 0")
        if not self.alpha <= self.beta:
            raise ValueError(f"loss.alpha={self.alpha} must be <= loss.beta={self.beta}")
        if not self.tis_cap > 0:
            raise ValueError(f"loss.tis_cap={self.tis_cap} must be > 0")
        for name in ("kpop_bound", "seq_bound"):  # an infinite bound would never mask: use correction "none" / "tis"
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"loss.{name}={getattr(self, name)} must be > 0 and finite")
