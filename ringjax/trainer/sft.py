"""Supervised fine-tuning (Ring-lite's long-CoT SFT) and the entropy-based choice of the checkpoint RL starts from.

Ring-lite (arXiv 2506.14731; docs/architecture.md, recipes): SFT with AdamW (wd 0.1, lr 3e-4 cosine, 1% warm-up,
3 epochs), then RL starts from the SFT checkpoint whose token entropy lies in 0.3-0.5, chosen by entropy, not by
validation score (docs/architecture.md, entropy-band checkpoint pick).

Per step: take `batch_size` examples from a seeded stream (each epoch a fresh permutation of the usable examples),
pack prompt + response into fixed-shape micro-batches with the loss on response tokens only, and take ONE AdamW
update on the mean NLL over the step's response tokens (`token_mean` weights: 1 / response tokens of the whole
step, so the micro-batch split does not change the update). At every checkpoint (and every `eval_every` steps) the
mean token entropy and NLL of the model on the eval examples' response tokens are computed and written to the
checkpoint extras (`eval`) and to `run_dir/logs/eval/metrics.jsonl`; `pick_checkpoint` reads them back.

Decisions the reports leave open:
- Entropy is measured teacher-forced on held-out (prompt, response) pairs (default: the first `eval_size` usable
  training examples), not on sampled responses: it is cheap, deterministic, and tracks the same collapse.
- A sequence longer than `seq_len` (or with an empty prompt or response) is skipped and counted, never trained on
  truncated. `epochs` counts passes over the usable examples; the last step of a run may hold fewer examples.
- The number of micro-batches per step varies with the examples' lengths; the train step compiles once anyway
  (`ringjax.trainer.step.TrainStep`).
- The loss is the NLL only: no router auxiliary loss, and the router expert bias stays frozen as in RL.
- The final step is always checkpointed (when checkpointing is on), so a run's last model can be picked.
- A checkpoint holds the train state plus `data` (example cursor, epoch, dataset size, seed: a resumed run draws
  the same examples and ends bit-identical), `eval` and `skipped`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringjax import storage
from ringjax.model import Ling
from ringjax.sharding import check_context, check_rows, use_mesh
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.c3po import Response, StepBatch, pack_micro_batches
from ringjax.trainer.checkpoint import Checkpointer, checkpoint_steps
from ringjax.trainer.metrics import MetricsWriter, read_metrics
from ringjax.trainer.optim import OptimConfig, learning_rate, make_optimizer
from ringjax.trainer.state import (TrainState, abstract_train_state, checkpoint_meta, flatten_state, init_train_state,
                                   merge_model, restore_train_state)
from ringjax.trainer.step import Batch, LossFn, device_batch, finalize_metrics, make_train_step, sequence_logprobs

ENTROPY_BAND = (0.3, 0.5)  # Ring-lite: lower entropy collapses RL earlier, higher converges slowly


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """One (prompt, response) pair of token ids; the loss covers the response only."""

    prompt: tuple[int, ...]
    response: tuple[int, ...]
    id: int | str = 0

    def __post_init__(self):
        object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
        object.__setattr__(self, "response", tuple(int(t) for t in self.response))

    def __len__(self) -> int:
        return len(self.prompt) + len(self.response)


def ring_lite_sft_optim(total_steps: int) -> OptimConfig:
    """Ring-lite SFT: AdamW lr 3e-4, cosine decay to 0 over `total_steps`, 1% linear warm-up, weight decay 0.1."""
    return OptimConfig(lr=3e-4, weight_decay=0.1, schedule="cosine", warmup_steps=round(0.01 * total_steps),
                       total_steps=total_steps)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """SFT run settings; set exactly one of `steps` and `epochs`. A given `optim` must have `total_steps` None
    (constant schedule) or equal to the run's step count."""

    steps: int | None = None  # optimisation steps of the run (or give epochs)
    epochs: int | None = None  # passes over the usable examples (or give steps)
    batch_size: int = 8  # examples per optimisation step
    rows: int = 8  # micro-batch rows
    seq_len: int = 256  # micro-batch row length; longer examples are skipped
    eval_every: int = 0  # also measure held-out token entropy every N steps; 0: at checkpoints only
    checkpoint_every: int = 0  # save a checkpoint every N steps (and after the last); 0: no checkpoints
    keep_checkpoints: int = 100  # keep the candidates pick_checkpoint chooses from
    eval_size: int = 64  # training examples used as the held-out entropy probe when no eval examples are given
    seed: int = 0  # example order (a fresh permutation each epoch) and the train state's RNG
    pad_id: int = 0  # token id that fills the unused columns of packed rows
    optim: OptimConfig | None = None  # AdamW settings; None: Ring-lite's (lr 3e-4 cosine to 0, 1% warm-up, wd 0.1)

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"set exactly one of sft.steps={self.steps} and sft.epochs={self.epochs}")
        for name in ("steps", "epochs", "batch_size", "rows", "keep_checkpoints", "eval_size"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"sft.{name}={value!r} must be an int >= 1")
        for name in ("eval_every", "checkpoint_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ValueError(f"sft.{name}={getattr(self, name)!r} must be an int >= 0")
        if self.seq_len < 2:
            raise ValueError(f"sft.seq_len={self.seq_len} must be >= 2")
        if self.steps is not None:
            self.optimizer(self.steps)

    def total_steps(self, n_examples: int) -> int:
        """Optimisation steps of the run over `n_examples` usable examples."""
        return self.steps if self.steps is not None else -(-self.epochs * n_examples // self.batch_size)

    def optimizer(self, total_steps: int) -> OptimConfig:
        if self.optim is None:
            return ring_lite_sft_optim(total_steps)
        if self.optim.total_steps is not None and self.optim.total_steps != total_steps:
            raise ValueError(f"sft.optim.total_steps={self.optim.total_steps} differs from the run's {total_steps} "
                             "steps: the learning-rate schedule would not end with the run")
        return self.optim


@dataclasses.dataclass
class SFTResult:
    state: TrainState
    history: list[dict]  # per step: metrics and the ids of the examples trained on
    skipped: dict[str, int]  # {"too_long", "empty", "eval_too_long", "eval_empty"}
    stopped: bool = False  # ended early by `should_stop` (checkpointed when checkpointing is on)


def read_sft_rows(path: str) -> tuple[list[tuple[str, str, int | str]], int]:
    """((prompt, response, id) texts, bad rows) of a JSONL file of {"prompt": str, "response": str[, "id": int | str]}
    rows; the id defaults to the line number.

    Bad rows (not JSON, not an object, a field missing, not a string or empty) are skipped and counted; a file
    without a usable row raises ValueError naming it."""
    rows, bad = [], 0
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)
                    and isinstance(row.get("response"), str) and row["prompt"] and row["response"]):
                bad += 1
                continue
            rid = row.get("id")
            rows.append((row["prompt"], row["response"], rid if isinstance(rid, int | str) else line_no))
    if not rows:
        raise ValueError(f"{path}: no usable row ({bad} bad); each line must be a JSON object with non-empty string "
                         "fields 'prompt' and 'response'")
    return rows, bad


def read_sft_jsonl(path: str, encode: Callable[[str], list[int]]) -> tuple[list[SFTExample], int]:
    """(examples, bad rows) of `read_sft_rows(path)` encoded with `encode`; a row empty after encoding is bad too."""
    rows, bad = read_sft_rows(path)
    examples = []
    for prompt_text, response_text, rid in rows:
        prompt, response = encode(prompt_text), encode(response_text)
        if not prompt or not response:
            bad += 1
            continue
        examples.append(SFTExample(prompt, response, rid))
    if not examples:
        raise ValueError(f"{path}: no usable row ({bad} bad); each line must be a JSON object with non-empty string "
                         "fields 'prompt' and 'response'")
    return examples, bad


def as_examples(examples: Sequence, seq_len: int) -> tuple[list[SFTExample], int, int]:
    """(usable examples, too long, empty): tuples become `SFTExample`s with their index as id."""
    out, too_long, empty = [], 0, 0
    for index, x in enumerate(examples):
        if not isinstance(x, SFTExample):
            try:
                prompt, response = x
            except (TypeError, ValueError) as e:
                raise ValueError(f"example {index} is a {type(x).__name__}, not an SFTExample or a (prompt_ids, "
                                 "response_ids) pair") from e
            x = SFTExample(prompt, response, index)
        if not x.prompt or not x.response:
            empty += 1
        elif len(x) > seq_len:
            too_long += 1
        else:
            out.append(x)
    return out, too_long, empty


def sft_loss_fn() -> LossFn:
    """Mean NLL over the step's response tokens (the batch's `token_weights` are 1 / step tokens) as the loss."""

    def loss_fn(model: Ling, mb: Batch, logp_old: jax.Array, n_micro: int):
        logp, entropy, _ = sequence_logprobs(model, mb)  # [R S-1] each
        mask = mb["loss_mask"]
        nll = jnp.where(mask, -logp, 0.0)  # [R S-1]
        loss = jnp.sum(nll * mb["token_weights"])
        sums = {"loss": loss, "tokens": jnp.sum(mask).astype(jnp.float32), "nll_sum": jnp.sum(nll),
                "entropy_sum": jnp.sum(jnp.where(mask, entropy, 0.0))}
        return loss, sums

    return loss_fn


def pack_examples(examples: Sequence[SFTExample], rows: int, seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Stacked micro-batches [N, rows, ...] of the examples (loss on responses, token-mean weights)."""
    responses = tuple(Response(prompt_id=x.id, prompt=x.prompt, tokens=x.response,
                               logp_infer=np.zeros(len(x.response)), reward=0.0, advantage=0.0) for x in examples)
    step = StepBatch(responses, phi=sum(len(r) for r in responses), cut=0)
    return stack_micro_batches(pack_micro_batches(step, rows, seq_len, pad_id=pad_id), "token_mean", step.phi)


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a permutation of range(n) seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _draw(cursor: int, count: int, n: int, seed: int, limit: int | None) -> list[tuple[int, int]]:
    """(epoch, example index) of stream positions cursor .. cursor + count (stopping at `limit`)."""
    end = cursor + count if limit is None else min(cursor + count, limit)
    return [(pos // n, int(epoch_order(seed, pos // n, n)[pos % n])) for pos in range(cursor, end)]


def make_eval_fn(graphdef: nnx.GraphDef) -> Callable[[TrainState, Batch], jax.Array]:
    """Jitted (state, stacked micro-batches) -> [3] sums of (entropy, NLL, tokens) over the response tokens."""

    @jax.jit
    def run(params, frozen, batch):
        model = merge_model(graphdef, params, frozen)

        def one(mb):
            logp, entropy, _ = sequence_logprobs(model, mb)
            mask = mb["loss_mask"]
            return jnp.stack([jnp.sum(jnp.where(mask, entropy, 0.0)), jnp.sum(jnp.where(mask, -logp, 0.0)),
                              jnp.sum(mask).astype(jnp.float32)])

        return jnp.sum(jax.lax.map(one, batch), axis=0)

    return lambda state, batch: run(state.params, state.frozen, batch)


def train_sft(model: Ling, examples: Sequence, cfg: SFTConfig, run_dir: str | None = None, *, mesh=None,
              eval_examples: Sequence | None = None, on_step: Callable[[int, dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> SFTResult:
    """Runs (or resumes, when `run_dir` holds a checkpoint) SFT until the configured steps are done.

    `examples` / `eval_examples`: `SFTExample`s or (prompt_ids, response_ids) pairs. `on_step(step, metrics)`
    runs after each step (and its checkpoint save). When `should_stop()` turns true after a step, that step is
    checkpointed and the run returns (`stopped`); that checkpoint records no evaluation, so `pick_checkpoint`
    chooses among the same checkpoints as in a run that was never stopped."""
    check_rows(mesh, {"sft.rows": cfg.rows})
    check_context(mesh, {"sft.seq_len": cfg.seq_len})
    train, too_long, empty = as_examples(examples, cfg.seq_len)
    if not train:
        raise ValueError(f"no usable SFT example: {too_long} longer than sft.seq_len={cfg.seq_len}, {empty} empty")
    evals, eval_long, eval_empty = (as_examples(eval_examples, cfg.seq_len) if eval_examples is not None
                                    else (train[:cfg.eval_size], 0, 0))
    if not evals:
        raise ValueError(f"no usable eval example: {eval_long} longer than sft.seq_len={cfg.seq_len}, "
                         f"{eval_empty} empty")
    skipped = {"too_long": too_long, "empty": empty, "eval_too_long": eval_long, "eval_empty": eval_empty}
    n, total = len(train), cfg.total_steps(len(train))
    limit = None if cfg.epochs is None else cfg.epochs * n
    optim = cfg.optimizer(total)
    tx, lr = make_optimizer(optim), learning_rate(optim)
    graphdef, state = init_train_state(model, tx, cfg.seed, mesh)
    _, abstract = abstract_train_state(model.config, tx, mesh)
    step_fn = make_train_step(graphdef, tx, sft_loss_fn(), state_shardings=abstract if mesh is not None else None,
                              logp_old="none", chunk=-(-cfg.batch_size // cfg.rows))  # one call a step
    eval_fn = make_eval_fn(graphdef)
    eval_batch = {k: v for k, v in pack_examples(evals, cfg.rows, cfg.seq_len, cfg.pad_id).items()
                  if k in ("tokens", "positions", "segment_ids", "loss_mask")}
    eval_batch = device_batch(eval_batch, mesh)
    data_id = {"examples": n, "seed": cfg.seed, "batch_size": cfg.batch_size, "total_steps": total}
    cursor, ckpt = 0, None
    if run_dir is not None and cfg.checkpoint_every:
        ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), every=cfg.checkpoint_every,
                            keep=cfg.keep_checkpoints, meta=checkpoint_meta(model.config))
        if ckpt.latest_step() is not None:
            try:
                state, cursor = _resume(ckpt, state, data_id)
            except BaseException:
                ckpt.close()
                raise
    logs = os.path.join(run_dir, "logs") if run_dir else ""
    enabled = run_dir is not None and jax.process_index() == 0
    writer = MetricsWriter(logs, enabled=enabled, resumed_at=int(state.step))
    eval_writer = MetricsWriter(os.path.join(logs, "eval"), prefix="eval", enabled=enabled, resumed_at=int(state.step))
    history, stopped = [], False
    try:
        while int(state.step) < total:
            t0, step = time.perf_counter(), int(state.step)
            drawn = _draw(cursor, cfg.batch_size, n, cfg.seed, limit)
            cursor += len(drawn)
            picked = [train[i] for _, i in drawn]
            batch = pack_examples(picked, cfg.rows, cfg.seq_len, cfg.pad_id)
            with use_mesh(mesh):
                state, sums = step_fn(state, step_fn.inputs(batch, mesh))
            sums = jax.device_get(sums)
            metrics = finalize_metrics(sums)
            elapsed = time.perf_counter() - t0
            metrics.update(nll_mean=float(sums["nll_sum"]) / max(float(sums["tokens"]), 1.0), lr=float(lr(step)),
                           epoch=drawn[-1][0], examples=len(picked), micro_batches=batch["tokens"].shape[0],
                           step_compiles=max(step_fn.compiles.values()),
                           step_s=elapsed, tokens_per_s=float(sums["tokens"]) / elapsed,
                           skipped_updates=int(state.skipped))
            stopped = should_stop is not None and should_stop()
            regular = ckpt is not None and (ckpt.should_save(step + 1) or step + 1 == total)
            save = regular or (ckpt is not None and stopped)
            evaluation = None
            if regular or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
                with use_mesh(mesh):
                    ent, nll, tokens = (float(v) for v in jax.device_get(eval_fn(state, eval_batch)))
                evaluation = {"entropy": ent / tokens, "nll": nll / tokens, "tokens": int(tokens)}
                eval_writer.write(step + 1, evaluation)
                metrics.update(eval_entropy=evaluation["entropy"], eval_nll=evaluation["nll"])
            writer.write(step + 1, metrics)
            history.append({"step": step + 1, "example_ids": [x.id for x in picked], **metrics})
            if save:
                data = {**data_id, "cursor": cursor, "epoch": cursor // n, "index": cursor % n}
                extras = {"data": data, "skipped": skipped, **({"eval": evaluation} if evaluation else {})}
                ckpt.save(step + 1, flatten_state(state), extras=extras, force=True)
            if on_step is not None:
                on_step(step + 1, metrics)
            if stopped:
                break
    finally:
        if ckpt is not None:
            ckpt.wait()
            ckpt.close()
        writer.close()
        eval_writer.close()
    return SFTResult(state, history, skipped, stopped)


def _resume(ckpt: Checkpointer, state: TrainState, data_id: dict) -> tuple[TrainState, int]:
    """(restored state, example cursor) of the latest checkpoint; ValueError if another dataset / seed wrote it."""
    restored, extras, step = restore_train_state(ckpt, state)
    saved = {k: extras["data"].get(k) for k in data_id}
    if saved != data_id:
        raise ValueError(f"cannot resume {ckpt.directory} step {step}: it was written by a run with {saved}, "
                         f"this run has {data_id}")
    return restored, int(extras["data"]["cursor"])


def eval_entropies(run_dir: str) -> dict[int, float | None]:
    """{checkpoint step: eval entropy} of the checkpoints in `run_dir/checkpoints`, read from their `eval` extra,
    else from the eval metrics log; None where neither has it."""
    ckpt_dir = storage.join(run_dir, "checkpoints")
    if not storage.is_dir(ckpt_dir):
        raise FileNotFoundError(f"{run_dir} has no checkpoints folder ({ckpt_dir})")
    steps = checkpoint_steps(ckpt_dir)
    log_dir = storage.join(run_dir, "logs", "eval")
    logged = {}
    if storage.is_file(storage.join(log_dir, "metrics.jsonl")):
        logged = {int(row["step"]): float(row["entropy"]) for row in read_metrics(log_dir) if "entropy" in row}
    out: dict[int, float | None] = {}
    for step in steps:
        path = storage.join(ckpt_dir, str(step), "eval", "metadata")  # orbax JsonSave item file
        saved = storage.read_json(path) if storage.is_file(path) else None
        value = saved.get("entropy") if isinstance(saved, dict) else None
        out[step] = float(value) if value is not None else logged.get(step)
    return out


def pick_checkpoint(run_dir: str, band: tuple[float, float] = ENTROPY_BAND) -> tuple[int, float]:
    """(step, entropy) of the latest checkpoint whose eval entropy lies in [lo, hi] (Ring-lite: 0.3-0.5).

    Raises ValueError listing every checkpoint's entropy when none is in the band, FileNotFoundError when the run
    has no checkpoints."""
    lo, hi = (float(b) for b in band)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"entropy band ({lo}, {hi}) must be finite with lo <= hi")
    entropies = eval_entropies(run_dir)
    if not entropies:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(run_dir, 'checkpoints')}")
    inside = [s for s, e in entropies.items() if e is not None and lo <= e <= hi]
    if not inside:
        listed = ", ".join(f"step {s}: {'none recorded' if e is None else f'{e:.4f}'}" for s, e in entropies.items())
        raise ValueError(f"no checkpoint of {run_dir} has eval entropy in [{lo}, {hi}]; {listed}")
    step = max(inside)
    return step, entropies[step]

