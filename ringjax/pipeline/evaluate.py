"""Held-out accuracy and prompt pass rates: `samples` sampled responses per prompt, scored by the rewards.

Accuracy of a domain = mean reward over its prompts x samples (Ring's avg@k; the rewards are binary); the pass
rate of a prompt = mean reward over its samples (what the pass-rate filter reads, `pass_rates=True`). The
responses come from `engine`, any rollout engine already serving the model's weights (the pipeline builds the
configured one, `ringjax.trainer.engines.make_engine`), or by default from an embedded JAX engine built here on
the trainer's mesh with a fixed seed, so two evaluations of the same weights give the same numbers.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

import numpy as np

from ringjax.data import PromptRecord
from ringjax.model import Ling
from ringjax.sharding import batch_shards, use_mesh
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.rewards import RewardFn, RewardPool
from rollout.types import Request, SamplingParams


def engine_slots(slots: int, mesh=None) -> int:
    """`slots` rounded up to a multiple of `mesh`'s batch shards and context (what an embedded engine on it needs)."""
    shards = batch_shards(mesh, rows_over_context=True) if mesh is not None else 1
    return -(-slots // shards) * shards


def evaluate(model: Ling, records: Sequence[PromptRecord], reward_fn: RewardFn, *, encode: Callable[[str], list[int]],
             decode: Callable[[Sequence[int]], str], sampling: SamplingParams, samples: int, slots: int = 64,
             max_context: int | None = None, seed: int = 0, mesh=None, reward_workers: int = 4, engine=None,
             pass_rates: bool = False) -> dict:
    """{"accuracy": {domain: mean reward}, "prompts": {domain: n}, "response_len": {domain: mean tokens},
    "failed": requests the engine could not serve (scored 0, counted), "reward_errors": rewards that raised,
    "engine": the engine's class name, "engine_stats": its counters}; with `pass_rates` also
    "pass_rates": {record id: mean reward over its samples}.

    `engine`: a rollout engine that serves `model`'s weights; the caller closes it. None: an embedded `JaxEngine`
    of `model` on `mesh` sampling from `seed` (`slots` KV-cache rows at most, `max_context` tokens), closed here."""
    if not records:
        raise ValueError("evaluate: no held-out prompts")
    requests, owner = [], {}
    for i, record in enumerate(records):
        prompt = np.asarray(encode(record.prompt), np.int32)
        for k in range(samples):
            rid = f"{i}:{k}"
            requests.append(Request(rid, prompt, sampling))
            owner[rid] = record
    own = engine is None
    if own:
        if max_context is None:
            raise ValueError("evaluate: max_context is needed to build the embedded engine")
        engine = JaxEngine(model, slots=engine_slots(min(slots, len(requests)), mesh), max_context=max_context,
                           seed=seed, mesh=mesh)
    try:
        with use_mesh(mesh):
            outputs = run_to_completion(engine, requests)
        stats = {k: int(v) for k, v in sorted(getattr(engine, "stats", {}).items())}
    finally:
        if own:
            engine.close()
    failed = {rid for rid, out in outputs.items() if out.finish == "error"}
    items = [(owner[rid], decode(outputs[rid].tokens)) for rid in owner]
    with RewardPool(reward_fn, workers=reward_workers) as pool:
        results = pool.score(items)
        errors = pool.stats["errors"] + pool.stats["timeouts"]
    scores, lengths = collections.defaultdict(list), collections.defaultdict(list)
    per_record = collections.defaultdict(list)
    for (record, _), rid, result in zip(items, owner, results):
        score = 0.0 if rid in failed else result.score
        scores[record.domain].append(score)
        lengths[record.domain].append(len(outputs[rid].tokens))
        per_record[record.id].append(score)
    out = {"accuracy": {d: float(np.mean(v)) for d, v in sorted(scores.items())},
           "prompts": {d: len(v) // samples for d, v in sorted(scores.items())},
           "response_len": {d: float(np.mean(v)) for d, v in sorted(lengths.items())},
           "samples": samples, "failed": len(failed), "reward_errors": int(errors),
           "engine": type(engine).__name__, "engine_stats": stats}
    if pass_rates:
        out["pass_rates"] = {rid: float(np.mean(v)) for rid, v in per_record.items()}
    return out
