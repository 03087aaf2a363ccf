"""AdamW with warm-up + schedule and global-norm clipping, over trainable parameters only.

Only `nnx.Param` variables are optimised: the router `ExpertBias` (its own variable type) is not in the
trainable state at all, so no optimiser, gradient or weight decay can touch it. Weight decay skips norm
weights (stacked norms are 2-D, so the mask goes by name, not by rank).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import jax
import optax

Schedule = Literal["constant", "cosine", "linear"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW knobs (Ring-1T: lr 2e-6, betas 0.9 / 0.999, wd 0.01; Ring-lite SFT: lr 3e-4 cosine, wd 0.1)."""

    lr: float = 2e-6  # peak learning rate, reached at the end of the warm-up
    b1: float = 0.9  # AdamW decay of the first-moment (mean) estimate
    b2: float = 0.999  # AdamW decay of the second-moment (variance) estimate
    eps: float = 1e-8  # AdamW epsilon added to the root of the second moment
    weight_decay: float = 0.01  # decoupled (AdamW) weight decay; norm weights get none
    warmup_steps: int = 0  # steps of linear warm-up from 0 to lr
    schedule: Schedule = "constant"  # after the warm-up: constant, or cosine / linear decay to lr * min_lr_ratio
    total_steps: int | None = None  # step at which cosine / linear decay ends (required by them); None: constant
    min_lr_ratio: float = 0.0  # final learning rate of the cosine / linear decay, as a fraction of lr
    grad_clip: float = 1.0  # clip the gradient to this global L2 norm before the update; 0: no clipping

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"optim.lr={self.lr} must be > 0")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optim.{name}={getattr(self, name)} must lie in [0, 1)")
        for name in ("eps", "weight_decay", "warmup_steps", "grad_clip", "min_lr_ratio"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"optim.{name}={getattr(self, name)} must be >= 0")
        if self.schedule not in get_args(Schedule):
            raise ValueError(f"optim.schedule={self.schedule!r} is not one of {get_args(Schedule)}")
        if self.schedule != "constant" and (self.total_steps is None or self.total_steps <= self.warmup_steps):
            raise ValueError(f"optim.schedule={self.schedule!r} needs optim.total_steps > warmup_steps "
                             f"({self.warmup_steps}), got {self.total_steps}")
        if not self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio} must be <= 1")


def learning_rate(cfg: OptimConfig) -> optax.Schedule:
    """Step -> learning rate."""
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.lr)
    else:
        steps = cfg.total_steps - cfg.warmup_steps
        end = cfg.lr * cfg.min_lr_ratio
        decay = (optax.cosine_decay_schedule(cfg.lr, steps, alpha=cfg.min_lr_ratio) if cfg.schedule == "cosine"
                 else optax.linear_schedule(cfg.lr, end, steps))
    if cfg.warmup_steps == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), decay], [cfg.warmup_steps])


def decay_mask(params):
    """True for parameters that get weight decay: everything but norm weights."""
    return jax.tree_util.tree_map_with_path(lambda path, _: "norm" not in jax.tree_util.keystr(path).lower(), params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                        mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip > 0 else adamw
