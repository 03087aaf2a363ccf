"""The RL loop: rollouts -> C3PO steps of exactly phi tokens -> IcePop-masked update -> metrics -> checkpoint.

Per step: draw prompt batches from the grain pipeline and sample `samples_per_prompt` responses each with the
current policy until the pool holds at least phi response tokens; take exactly phi of them (`assemble_step`);
train once; log; save every `checkpoint_every` steps. What the step did not take (the cut tail and untaken
responses) stays in the pool for the next step (`leftover="keep"`, their tokens carry the policy version that
sampled them and IcePop weighs the mismatch) or is dropped and counted (`leftover="drop"`, Ring-lite's C3PO).

A checkpoint holds the train state (params, optimiser, step, skip count, RNG), the grain iterator position,
the pool and the rollout counter, so a resumed run continues exactly: same prompts, same samples, same
parameters as a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import numpy as np

from ringjax.data import PromptRecord, build_prompt_batches, iterator_state, restore_iterator
from ringjax.data.tokenize import ByteTokenizer
from ringjax.losses import LossConfig
from ringjax.model import Ling
from ringjax.sharding import check_rows, use_mesh
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.c3po import assemble_step, pack_micro_batches, response_tokens
from ringjax.trainer.checkpoint import Checkpointer
from ringjax.trainer.metrics import MetricsWriter
from ringjax.trainer.optim import OptimConfig, make_optimizer
from ringjax.trainer.rollout import RewardFn, decode_pool, encode_pool, encode_prompts, rollout
from ringjax.trainer.state import (TrainState, abstract_train_state, checkpoint_meta, flatten_state, init_train_state,
                                   merge_model, restore_train_state, split_model)
from ringjax.trainer.step import device_batch, finalize_metrics, make_score_fn, make_train_step, rl_loss_fn


@dataclasses.dataclass(frozen=True)
class RLConfig:
    steps: int = 10
    phi: int = 256  # response tokens per optimisation step (Ring-lite: 409,600)
    prompts_per_batch: int = 4
    samples_per_prompt: int = 4  # GRPO group size
    max_prompt_len: int = 32
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    eos_id: int | None = None
    rows: int = 8  # micro-batch rows
    seq_len: int = 64  # micro-batch row length
    leftover: Literal["keep", "drop"] = "keep"
    domain_weights: dict[str, float] | None = None  # e.g. stage 1 {"math": 1}, stage 2 {"code": 1, "science": 1}
    seed: int = 0
    checkpoint_every: int = 0  # 0: no checkpoints
    keep_checkpoints: int = 3
    loss: LossConfig = LossConfig(phi=256)
    optim: OptimConfig = OptimConfig()

    def __post_init__(self):
        for name in ("steps", "phi", "prompts_per_batch", "samples_per_prompt", "max_prompt_len", "max_new_tokens",
                     "rows", "seq_len", "keep_checkpoints"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"rl.{name}={getattr(self, name)} must be >= 1")
        if self.phi < self.max_new_tokens:
            raise ValueError(f"rl.phi={self.phi} is smaller than one response (max_new_tokens={self.max_new_tokens})")
        if self.seq_len < self.max_prompt_len + self.max_new_tokens:
            raise ValueError(f"rl.seq_len={self.seq_len} < max_prompt_len + max_new_tokens "
                             f"({self.max_prompt_len} + {self.max_new_tokens}): a sequence would not fit a row")
        if self.loss.aggregation == "c3po" and self.loss.phi != self.phi:
            raise ValueError(f"rl.loss.phi={self.loss.phi} differs from rl.phi={self.phi}")
        if self.leftover not in ("keep", "drop"):
            raise ValueError(f"rl.leftover={self.leftover!r} is not 'keep' or 'drop'")
        if self.checkpoint_every < 0:
            raise ValueError(f"rl.checkpoint_every={self.checkpoint_every} must be >= 0")


@dataclasses.dataclass
class RLResult:
    state: TrainState
    history: list[dict]  # per step: metrics and the prompt ids drawn for it


def train_rl(model: Ling, records: Sequence[PromptRecord], reward_fn: RewardFn, cfg: RLConfig, *,
             run_dir: str | None = None, mesh=None, encode: Callable[[str], list[int]] | None = None,
             on_step: Callable[[int, dict], None] | None = None) -> RLResult:
    """Runs (or resumes, when `run_dir` holds a checkpoint) RL until `cfg.steps` optimisation steps are done.

    `encode` turns a prompt into token ids (default: `ByteTokenizer`); `on_step(step, metrics)` runs after each
    step (and its checkpoint save)."""
    encode = encode or ByteTokenizer().encode
    check_rows(mesh, {"rl.rows": cfg.rows,
                      "rl.prompts_per_batch * samples_per_prompt": cfg.prompts_per_batch * cfg.samples_per_prompt})
    tx = make_optimizer(cfg.optim)
    graphdef, state = init_train_state(model, tx, cfg.seed, mesh)
    _, abstract = abstract_train_state(model.config, tx, mesh)
    step_fn = make_train_step(graphdef, tx, rl_loss_fn(cfg.loss, cfg.temperature), temperature=cfg.temperature,
                              state_shardings=abstract if mesh is not None else None)
    # the reference policy of the KL term: the starting model, whose arrays the train state does not share
    _, ref_params, ref_frozen = split_model(model)
    score = make_score_fn(graphdef, cfg.temperature) if cfg.loss.kl_coef > 0 else None
    batches = build_prompt_batches(records, cfg.prompts_per_batch, cfg.seed, weights=cfg.domain_weights)
    it, pool, rollouts = iter(batches), [], 0
    ckpt = None
    if run_dir is not None and cfg.checkpoint_every:
        ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), every=cfg.checkpoint_every,
                            keep=cfg.keep_checkpoints, meta=checkpoint_meta(model.config))
        if ckpt.latest_step() is not None:
            state, extras, _ = restore_train_state(ckpt, state)
            it = restore_iterator(batches, extras["data"])
            pool, rollouts = decode_pool(extras["pool"]["responses"]), int(extras["rollout"]["batches"])
    writer = MetricsWriter(os.path.join(run_dir, "logs") if run_dir else "", enabled=run_dir is not None and
                           jax.process_index() == 0)
    history = []
    try:
        while int(state.step) < cfg.steps:
            t0 = time.perf_counter()
            step, prompt_ids, new_tokens, too_long = int(state.step), [], 0, 0
            policy = merge_model(graphdef, state.params, state.frozen)
            while response_tokens(pool) < cfg.phi:
                drawn = next(it)
                kept, ids, skipped = encode_prompts(drawn, encode, cfg.max_prompt_len)
                too_long += skipped
                with use_mesh(mesh):
                    new = rollout(policy, kept, ids, reward_fn, jax.random.fold_in(state.rng, rollouts),
                                  samples=cfg.samples_per_prompt, width=cfg.max_prompt_len,
                                  max_new_tokens=cfg.max_new_tokens, loss=cfg.loss, temperature=cfg.temperature,
                                  top_p=cfg.top_p, eos_id=cfg.eos_id, version=step)
                rollouts += 1
                prompt_ids += [r.id for r in drawn]
                new_tokens += response_tokens(new)
                pool += new
            t_rollout = time.perf_counter() - t0
            taken, leftover = assemble_step(pool, cfg.phi, max_response_len=cfg.max_new_tokens)
            pool = leftover if cfg.leftover == "keep" else []
            batch = stack_micro_batches(pack_micro_batches(taken, cfg.rows, cfg.seq_len), cfg.loss)
            with use_mesh(mesh):
                batch = device_batch(batch, mesh)
                if score is not None:
                    batch["logp_ref"] = score(ref_params, ref_frozen, batch)
                state, sums = step_fn(state, batch)
            metrics = finalize_metrics(jax.device_get(sums))
            elapsed = time.perf_counter() - t0
            metrics.update(
                reward_mean=float(np.mean([r.reward for r in taken.responses])),
                response_len_mean=float(np.mean([len(r) + r.offset for r in taken.responses])),
                stale_tokens_frac=float(np.mean(np.concatenate([r.versions for r in taken.responses]) < step)),
                rollout_tokens=new_tokens, pool_tokens=response_tokens(pool),
                dropped_tokens=response_tokens(leftover) if cfg.leftover == "drop" else 0,
                prompts_too_long=too_long, rollout_s=t_rollout, step_s=elapsed,
                tokens_per_s=cfg.phi / elapsed, skipped_updates=int(state.skipped))
            writer.write(step + 1, metrics)
            history.append({"step": step + 1, "prompt_ids": prompt_ids, **metrics})
            if ckpt is not None and ckpt.should_save(step + 1):
                extras = {"data": iterator_state(it), "pool": {"responses": encode_pool(pool)},
                          "rollout": {"batches": rollouts}}
                ckpt.save(step + 1, flatten_state(state), extras=extras)
            if on_step is not None:
                on_step(step + 1, metrics)
    finally:
        if ckpt is not None:
            ckpt.wait()
            ckpt.close()
        writer.close()
    return RLResult(state, history)

