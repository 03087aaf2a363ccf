"""The RL loop: rollouts -> C3PO steps of exactly phi tokens -> IcePop-masked update -> metrics -> checkpoint.

Per step: hand the engine the current policy (version = step), then run rollout iterations of the scheduler
(`rollout.c3po_pp`: C3PO++ with carry-over, or whole synchronous batches) until the training pool holds at least
phi response tokens of complete GRPO groups; take exactly phi of them (`assemble_step`); train once; log; save
every `checkpoint_every` steps. `budget="groups"` trains instead on `prompts_per_batch` whole groups per step
(`take_groups`: the sample budget C3PO replaces; the token count varies, and `aggregation: c3po` still divides by
the constant phi). What the step did not take (the cut tail and untaken responses) stays in the pool
for the next step (`leftover="keep"`, their tokens carry the policy version that sampled them and IcePop weighs
the mismatch) or is dropped and counted (`leftover="drop"`, Ring-lite's C3PO).

The engine is the embedded JAX engine in this process, on the trainer's mesh (a weight update hands it the live
arrays: no copy), or `rollout.workers` Ray actors each with their own engine (weights shipped once per step
through the object store). A trainer of several processes whose rollouts run in Ray workers generates in process 0
only: the others send their shards of each update to the workers and receive the packed step from it
(`ringjax.trainer.driver`), then all train on it.

A checkpoint holds the train state (params, optimiser, step, skip count, RNG), the prompt stream position, the
training pool and the scheduler's partial rollouts, so a resumed run continues exactly: same prompts, same
samples, same parameters as a run that was never interrupted (in-process engine; Ray workers finish in
whatever order they finish).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import numpy as np

from ringjax.data import PromptRecord, build_prompt_batches, restore_iterator
from ringjax.data.tokenize import ByteTokenizer
from ringjax.losses import LossConfig
from ringjax.model import Ling
from ringjax.sharding import check_context, check_rows, context_size, use_mesh
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.c3po import assemble_step, groups_in, pack_micro_batches, response_tokens, take_groups
from ringjax.trainer.checkpoint import Checkpointer
from ringjax.trainer.driver import Driver, rollout_driver
from ringjax.trainer.engines import check_rollout_processes, export_for_servers, make_engine
from ringjax.trainer.metrics import MetricsWriter
from ringjax.trainer.optim import OptimConfig, make_optimizer
from ringjax.trainer.rollout_io import PromptStream, decode_pool, encode_pool, to_responses
from ringjax.trainer.state import (TrainState, abstract_train_state, checkpoint_meta, flatten_state, init_train_state,
                                   merge_model, restore_train_state, split_model)
from ringjax.trainer.step import finalize_metrics, make_score_fn, make_train_step, rl_loss_fn
from rollout.c3po_pp import C3POPlusPlus, C3POPPConfig, Decode
from rollout.config import RolloutConfig
from rollout.jax_engine import JaxEngine
from rollout.rewards import RewardFn, RewardPool
from rollout.types import SamplingParams
from rollout.weights import flat_weights

SCHEDULER_COUNTS = ("completed_groups", "dropped_groups", "dropped_tokens", "failed_groups", "resubmitted", "kept",
                    "tokens_generated")
REWARD_COUNTS = ("errors", "timeouts", "invalid_utf8", "killed")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    steps: int = 10  # optimisation steps to run (a pipeline stage sets its own)
    phi: int = 256  # response tokens per optimisation step (Ring-lite: 409,600); also the rollout iteration's target
    budget: Literal["tokens", "groups"] = "tokens"  # tokens: C3PO steps of exactly phi tokens; groups: each step
    # trains on prompts_per_batch whole GRPO groups, however many tokens they hold (the usual sample budget)
    prompts_per_batch: int = 4  # prompts per batch of the prompt stream; with samples_per_prompt the default omega
    samples_per_prompt: int = 4  # GRPO group size
    max_prompt_len: int = 32  # longest prompt in tokens (engine context = this + max_new_tokens); longer ones fail
    max_new_tokens: int = 16  # longest response in tokens; phi must be at least this
    temperature: float = 1.0  # sampling temperature; engine and trainer log-probs are taken at it
    top_p: float = 1.0  # nucleus sampling in the engine (the reported log-probs are not truncated)
    eos_id: int | None = None  # token that ends a response; None: none (the pipeline sets the tokenizer's)
    stop_ids: tuple[int, ...] = ()  # further ids that end a response (chat end-of-turn tokens), besides eos_id
    rows: int = 8  # micro-batch rows
    seq_len: int = 64  # micro-batch row length
    leftover: Literal["keep", "drop"] = "keep"  # cut tail and untaken responses: kept for the next step, or dropped
    domain_weights: dict[str, float] | None = None  # prompt mix by domain, e.g. {"code": 1, "science": 1}; None: all
    seed: int = 0  # prompt order, sampling and the train state's RNG
    checkpoint_every: int = 0  # save a checkpoint every N steps (and after the last); 0: no checkpoints
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    router_replay: Literal["off", "replay"] = "off"  # replay: the train step uses the engine's experts (R3)
    loss: LossConfig = LossConfig()  # the RL objective: advantages, IcePop, aggregation, regularisers
    optim: OptimConfig = OptimConfig()  # AdamW of the policy
    rollout: RolloutConfig = RolloutConfig()  # engine, scheduler (C3PO++ or sync) and reward workers

    @property
    def omega(self) -> int:
        """Inference pool capacity in responses."""
        return self.rollout.omega or self.prompts_per_batch * self.samples_per_prompt

    def scheduler(self) -> C3POPPConfig:
        r = self.rollout
        return C3POPPConfig(phi=self.phi, omega=self.omega, sigma=r.sigma, samples=self.samples_per_prompt,
                            mode=r.mode, carry_kv=r.carry_kv)

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
        if self.budget not in ("tokens", "groups"):
            raise ValueError(f"rl.budget={self.budget!r} is not 'tokens' or 'groups'")
        if self.leftover not in ("keep", "drop"):
            raise ValueError(f"rl.leftover={self.leftover!r} is not 'keep' or 'drop'")
        if self.checkpoint_every < 0:
            raise ValueError(f"rl.checkpoint_every={self.checkpoint_every} must be >= 0")
        if self.router_replay is False:  # YAML reads a bare `off` as false
            object.__setattr__(self, "router_replay", "off")
        if self.router_replay not in ("off", "replay"):
            raise ValueError(f"rl.router_replay={self.router_replay!r} is not 'off' or 'replay'")
        if self.router_replay == "replay" and not self.rollout.records_routing:
            raise ValueError("rl.router_replay=replay needs an engine that returns routing records: "
                             "rl.rollout.engine=jax, or sglang with rl.rollout.sglang.return_routed_experts=true")
        if self.rollout.zero_mismatch:
            r = self.rollout
            for bad, why in ((r.engine != "jax", f"rl.rollout.engine={r.engine!r} (needs 'jax')"),
                             (r.workers != 0, f"rl.rollout.workers={r.workers} (needs 0: the engine in this process)"),
                             (self.router_replay != "off", f"rl.router_replay={self.router_replay!r} (needs 'off')"),
                             (not r.numerics.is_default, "rl.rollout.numerics is not the default")):
                if bad:
                    raise ValueError(f"rl.rollout.zero_mismatch=true cannot hold with {why}")
        if self.omega < self.samples_per_prompt:
            raise ValueError(f"rl.rollout.omega={self.omega} cannot hold one group of samples_per_prompt="
                             f"{self.samples_per_prompt}")


@dataclasses.dataclass
class RLResult:
    state: TrainState
    history: list[dict]  # per step: metrics and the prompt ids drawn for it
    stopped: bool = False  # ended early by `should_stop` (checkpointed when checkpointing is on)


def _driver(cfg: RLConfig) -> Driver | None:
    """The leader / follower messages of a trainer of several processes whose rollouts run in Ray workers (process
    0 drives them); None when every process generates on the mesh, or there is one process."""
    check_rollout_processes("rl.rollout", cfg.rollout, jax.process_count())
    return rollout_driver("rl", cfg.rollout)


def _enough(pool: Sequence, cfg: RLConfig) -> bool:
    """Whether the training pool holds a step: phi tokens (token budget) or prompts_per_batch groups."""
    if cfg.budget == "tokens":
        return response_tokens(pool) >= cfg.phi
    return groups_in(pool) >= cfg.prompts_per_batch


def train_rl(model: Ling, records: Sequence[PromptRecord], reward_fn: RewardFn, cfg: RLConfig, *,
             run_dir: str | None = None, mesh=None, encode: Callable[[str], list[int]] | None = None,
             decode: Decode | None = None, on_step: Callable[[int, dict], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> RLResult:
    """Runs (or resumes, when `run_dir` holds a checkpoint) RL until `cfg.steps` optimisation steps are done.

    `reward_fn(record, response_text) -> float` (e.g. `rollout.rewards.RewardRouter()`); `encode` / `decode` map
    prompt text to ids and response ids to text or bytes (default: `ByteTokenizer`); `on_step(step, metrics)` runs
    after each step (and its checkpoint save). The last step is always checkpointed (when checkpointing is on);
    when `should_stop()` turns true after a step, that step is checkpointed and the run returns (`stopped`)."""
    encode = encode or ByteTokenizer().encode
    decode = decode or ByteTokenizer().decode_bytes
    check_rows(mesh, {"rl.rows": cfg.rows})
    check_rows(mesh, {"rl.rollout.slots": cfg.rollout.slots or cfg.omega}, rows_over_context=True)
    check_context(mesh, {"rl.seq_len": cfg.seq_len})
    if cfg.rollout.zero_mismatch and context_size(mesh) > 1:
        raise ValueError("rollout.zero_mismatch needs mesh.context=1: the engine decodes whole rows, so its "
                         "log-probs cannot be bit-equal to a trainer that splits rows over the context axis")
    tx = make_optimizer(cfg.optim)
    graphdef, state = init_train_state(model, tx, cfg.seed, mesh)
    _, abstract = abstract_train_state(model.config, tx, mesh)
    replay = cfg.router_replay == "replay"
    # groups: at most one row per response, so one call a step; tokens: chunks of the first step's count
    chunk = -(-cfg.prompts_per_batch * cfg.samples_per_prompt // cfg.rows) if cfg.budget == "groups" else None
    step_fn = make_train_step(graphdef, tx, rl_loss_fn(cfg.loss, cfg.temperature, replay), temperature=cfg.temperature,
                              state_shardings=abstract if mesh is not None else None, router_replay=replay,
                              chunk=chunk, logp_old="pass" if cfg.rollout.zero_mismatch else "inline")
    # the reference policy of the KL term: the starting model, whose arrays the train state does not share
    _, ref_params, ref_frozen = split_model(model)
    score = make_score_fn(graphdef, cfg.temperature, replay) if cfg.loss.kl_coef > 0 else None
    batches = build_prompt_batches(records, cfg.prompts_per_batch, cfg.seed, weights=cfg.domain_weights)
    stream, pool = PromptStream(iter(batches), encode), []
    sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                              tuple(cfg.stop_ids) + (() if cfg.eos_id is None else (cfg.eos_id,)))
    rewards = RewardPool(reward_fn, workers=cfg.rollout.reward_workers, timeout_s=cfg.rollout.reward_timeout_s)
    sched = C3POPlusPlus(cfg.scheduler(), sampling, stream, rewards, decode)
    ckpt = None
    if run_dir is not None and cfg.checkpoint_every:
        ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), every=cfg.checkpoint_every,
                            keep=cfg.keep_checkpoints, meta=checkpoint_meta(model.config))
        if ckpt.latest_step() is not None:
            state, extras, _ = restore_train_state(ckpt, state)
            stream = PromptStream(restore_iterator(batches, extras["data"]["data"]), encode,
                                  [PromptRecord(**r) for r in extras["data"]["buffer"]])
            sched.prompts = stream
            sched.load_state_dict(extras["rollout"]["scheduler"])
            pool = decode_pool(extras["pool"]["responses"])
    writer = MetricsWriter(os.path.join(run_dir, "logs") if run_dir else "", enabled=run_dir is not None and
                           jax.process_index() == 0, resumed_at=int(state.step))
    driver = _driver(cfg)
    export = export_for_servers(model, cfg, run_dir) if driver is not None else None  # every process takes part
    weights = lambda: flat_weights(merge_model(graphdef, state.params, state.frozen))  # noqa: E731 - the live state
    engine = None
    history, stopped = [], False
    routing = collections.Counter()  # responses whose routing record was unusable: "dropped" (replay), "missing"

    def rollout(step: int) -> dict:
        """Updates the engine, generates until the pool holds a step, takes it and packs it: {"batch", "phi",
        "metrics" (those of the rollout side), "drawn"}. A multi-process trainer with a remote engine runs it in
        process 0 only (`Driver.share`)."""
        nonlocal engine, pool
        t0 = time.perf_counter()
        before, scored = collections.Counter(sched.stats), rewards.stats
        zeros, records = collections.Counter(rewards.reasons), collections.Counter(routing)
        if engine is None:
            engine = make_engine(model, cfg, mesh, run_dir, driver=driver, weights=weights, export=export)
        engine.update_weights(merge_model(graphdef, state.params, state.frozen), version=step)
        if isinstance(engine, JaxEngine):
            engine.reseed(jax.random.fold_in(state.rng, step))
        stream.drawn = []
        with use_mesh(mesh):
            while not _enough(pool, cfg):
                finished = sched.run_iteration(engine)
                if not finished and sched.exhausted:
                    raise RuntimeError(f"rl: the prompts ran out with {response_tokens(pool)} tokens of "
                                       f"{groups_in(pool)} groups collected (rl.budget={cfg.budget}); "
                                       f"rollout errors: {sched.errors[:3]}")
                pool += to_responses(finished, cfg.loss, model.config, replay, routing)
        if cfg.budget == "tokens":
            taken, leftover = assemble_step(pool, cfg.phi, max_response_len=cfg.max_new_tokens)
        else:
            taken, leftover = take_groups(pool, cfg.prompts_per_batch)
        pool = leftover if cfg.leftover == "keep" else []
        if cfg.rollout.zero_mismatch:  # the engine's layout: one sequence per row, rows as long as its context
            mbs = pack_micro_batches(taken, cfg.rows, cfg.max_prompt_len + cfg.max_new_tokens, packed=False)
        else:
            mbs = pack_micro_batches(taken, cfg.rows, cfg.seq_len)
        versions = np.concatenate([r.versions for r in taken.responses])
        metrics = dict(
            reward_mean=float(np.mean([r.reward for r in taken.responses])),
            response_len_mean=float(np.mean([len(r) + r.offset for r in taken.responses])),
            stale_tokens_frac=float(np.mean(versions < step)), version_lag_mean=float(np.mean(step - versions)),
            pool_tokens=response_tokens(pool), inflight_groups=len(sched.groups),
            dropped_tokens=response_tokens(leftover) if cfg.leftover == "drop" else 0,
            rollout_s=time.perf_counter() - t0, step_responses=len(taken.responses),
            **{f"rollout_{k}": sched.stats[k] - before[k] for k in SCHEDULER_COUNTS},
            **{f"reward_{k}": rewards.stats[k] - scored[k] for k in REWARD_COUNTS},
            **{f"reward_zero_{k}": v for k, v in (collections.Counter(rewards.reasons) - zeros).items()},
            **{f"routing_{k}": routing[k] - records[k] for k in ("dropped", "missing")})
        return {"batch": stack_micro_batches(mbs, cfg.loss.aggregation, cfg.phi),  # c3po divides by the constant phi
                "phi": taken.phi, "metrics": metrics, "drawn": list(stream.drawn)}

    try:
        while int(state.step) < cfg.steps:
            t0 = time.perf_counter()
            step = int(state.step)
            out = rollout(step) if driver is None else driver.share(functools.partial(rollout, step), weights)
            with use_mesh(mesh):
                inputs = step_fn.inputs(out["batch"], mesh)
                if score is not None:
                    for chunk in inputs.chunks:
                        chunk["logp_ref"] = score(ref_params, ref_frozen, chunk)
                state, sums = step_fn(state, inputs)
            metrics = finalize_metrics(jax.device_get(sums))
            elapsed = time.perf_counter() - t0
            metrics.update(out["metrics"], step_s=elapsed, tokens_per_s=out["phi"] / elapsed,
                           skipped_updates=int(state.skipped), micro_batches=inputs.micro_batches,
                           step_compiles=max(step_fn.compiles.values()))
            writer.write(step + 1, metrics)
            history.append({"step": step + 1, "prompt_ids": out["drawn"], **metrics})
            stopped = should_stop is not None and should_stop()
            if ckpt is not None and (ckpt.should_save(step + 1) or step + 1 == cfg.steps or stopped):
                # a follower holds no stream, pool or scheduler: Orbax writes these items from process 0 only
                leads = driver is None or driver.leader
                extras = {"data": stream.state() if leads else {}, "pool": {"responses": encode_pool(pool)},
                          "rollout": {"scheduler": sched.state_dict(engine) if leads else {}}}
                ckpt.save(step + 1, flatten_state(state), extras=extras, force=True)
            if on_step is not None:
                on_step(step + 1, metrics)
            if stopped:
                break
    finally:
        rewards.close()
        if engine is not None:
            engine.close()
        if ckpt is not None:
            ckpt.wait()
            ckpt.close()
        writer.close()
    return RLResult(state, history, stopped)
