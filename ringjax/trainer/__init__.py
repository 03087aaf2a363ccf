"""The RL trainer: C3PO step assembly, the sharded train step, checkpoints, metrics and the RL loop.

Submodules load lazily where they pull in heavy dependencies (orbax, tensorboardX): import
`ringjax.trainer.rl`, `.checkpoint`, `.metrics` or `.sft` directly.
"""

from ringjax.trainer.c3po import (
    MicroBatch,
    Response,
    StepBatch,
    assemble_step,
    pack_micro_batches,
    response_tokens,
    split_response,
    take_groups,
)
from ringjax.trainer.optim import OptimConfig, make_optimizer
from ringjax.trainer.state import TrainState, abstract_train_state, init_train_state
from ringjax.trainer.step import make_train_step, rl_loss_fn

__all__ = ["MicroBatch", "OptimConfig", "Response", "StepBatch", "TrainState", "abstract_train_state",
           "assemble_step", "init_train_state", "make_optimizer", "make_train_step", "pack_micro_batches",
           "response_tokens", "rl_loss_fn", "split_response", "take_groups"]
