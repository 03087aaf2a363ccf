"""RL trainer pieces: C3PO token-budget step assembly and micro-batch packing."""

from ringjax.trainer.c3po import (
    MicroBatch,
    Response,
    StepBatch,
    assemble_step,
    pack_micro_batches,
    response_tokens,
    split_response,
)

__all__ = ["MicroBatch", "Response", "StepBatch", "assemble_step", "pack_micro_batches", "response_tokens",
           "split_response"]
