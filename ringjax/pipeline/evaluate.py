"""Held-out accuracy: `samples` sampled responses per prompt from the embedded JAX engine, scored by the rewards.

Accuracy of a domain = mean reward over its prompts x samples (Ring's avg@k; the rewards are binary). The engine
runs on the trainer's mesh with a fixed seed, so two evaluations of the same weights give the same numbers.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

import numpy as np

from ringjax.data import PromptRecord
from ringjax.model import Ling
from ringjax.sharding import use_mesh
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.rewards import RewardFn, RewardPool
from rollout.types import Request, SamplingParams


def evaluate(model: Ling, records: Sequence[PromptRecord], reward_fn: RewardFn, *, encode: Callable[[str], list[int]],
             decode: Callable[[Sequence[int]], str], sampling: SamplingParams, samples: int, slots: int,
             max_context: int, seed: int = 0, mesh=None, reward_workers: int = 4) -> dict:
    """{"accuracy": {domain: mean reward}, "prompts": {domain: n}, "response_len": {domain: mean tokens},
    "failed": requests the engine could not serve (scored 0, counted), "reward_errors": rewards that raised}."""
    if not records:
        raise ValueError("evaluate: no held-out prompts")
    requests, owner = [], {}
    for i, record in enumerate(records):
        prompt = np.asarray(encode(record.prompt), np.int32)
        for k in range(samples):
            rid = f"{i}:{k}"
            requests.append(Request(rid, prompt, sampling))
            owner[rid] = record
    engine = JaxEngine(model, slots=min(slots, len(requests)), max_context=max_context, seed=seed, mesh=mesh)
    try:
        with use_mesh(mesh):
            outputs = run_to_completion(engine, requests)
    finally:
        engine.close()
    failed = {rid for rid, out in outputs.items() if out.finish == "error"}
    items = [(owner[rid], decode(outputs[rid].tokens)) for rid in owner]
    with RewardPool(reward_fn, workers=reward_workers) as pool:
        results = pool.score(items)
        errors = pool.stats["errors"] + pool.stats["timeouts"]
    scores, lengths = collections.defaultdict(list), collections.defaultdict(list)
    for (record, _), rid, result in zip(items, owner, results):
        scores[record.domain].append(0.0 if rid in failed else result.score)
        lengths[record.domain].append(len(outputs[rid].tokens))
    return {"accuracy": {d: float(np.mean(v)) for d, v in sorted(scores.items())},
            "prompts": {d: len(v) // samples for d, v in sorted(scores.items())},
            "response_len": {d: float(np.mean(v)) for d, v in sorted(lengths.items())},
            "samples": samples, "failed": len(failed), "reward_errors": int(errors)}
