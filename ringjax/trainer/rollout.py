"""Synchronous rollouts with the embedded KV-cache sampler: prompts -> scored, advantaged `Response`s.

The trainer's own rollout path (tests, the embedded demo job, single-host runs); the Ray / SGLang workers of
the rollout package produce the same `Response` records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ringjax.data import PromptRecord
from ringjax.generate import generate
from ringjax.losses import LossConfig, compute_advantages
from ringjax.model import Ling
from ringjax.trainer.c3po import Response

RewardFn = Callable[[PromptRecord, np.ndarray], float]


def encode_prompts(records: Sequence[PromptRecord], encode: Callable[[str], list[int]], max_len: int
                   ) -> tuple[list[PromptRecord], list[np.ndarray], int]:
    """Token ids of each prompt; prompts longer than `max_len` are left out and counted (third value)."""
    kept, ids, too_long = [], [], 0
    for r in records:
        t = np.asarray(encode(r.prompt), np.int32)
        if 1 <= len(t) <= max_len:
            kept.append(r)
            ids.append(t)
        else:
            too_long += 1
    return kept, ids, too_long


def rollout(model: Ling, records: Sequence[PromptRecord], prompt_ids: Sequence[np.ndarray], reward_fn: RewardFn,
            key: jax.Array, *, samples: int, width: int, max_new_tokens: int, loss: LossConfig,
            temperature: float = 1.0, top_p: float = 1.0, eos_id: int | None = None, version: int = 0
            ) -> list[Response]:
    """`samples` responses per prompt (one GRPO group each), rewarded and with group-normalised advantages."""
    n = len(records)
    if n == 0:
        return []
    tokens = np.zeros((n * samples, width), np.int32)
    lens = np.zeros((n * samples,), np.int32)
    for i, ids in enumerate(prompt_ids):
        tokens[i * samples:(i + 1) * samples, :len(ids)] = ids
        lens[i * samples:(i + 1) * samples] = len(ids)
    out = generate(model, jnp.asarray(tokens), jnp.asarray(lens), max_new_tokens, rng=key, temperature=temperature,
                   top_p=top_p, eos_id=eos_id)
    gen, logp, length = (np.asarray(x) for x in jax.device_get((out.tokens, out.logprobs, out.lengths)))
    rewards = np.array([[reward_fn(records[i], gen[i * samples + j, :length[i * samples + j]])
                         for j in range(samples)] for i in range(n)], np.float32)  # [P G]
    adv = np.asarray(compute_advantages(jnp.asarray(rewards), loss))  # [P G]
    responses = []
    for i in range(n):
        for j in range(samples):
            b, m = i * samples + j, int(length[i * samples + j])
            responses.append(Response(prompt_id=records[i].id, prompt=prompt_ids[i], tokens=gen[b, :m],
                                      logp_infer=logp[b, :m], reward=float(rewards[i, j]), advantage=float(adv[i, j]),
                                      versions=np.full(m, version, np.int32), group_id=records[i].id))
    return responses


def encode_pool(pool: Sequence[Response]) -> list[dict]:
    """JSON form of unfinished / untrained responses (saved with a checkpoint: nothing is lost on resume)."""
    return [{"prompt_id": r.prompt_id, "prompt": r.prompt.tolist(), "tokens": r.tokens.tolist(),
             "logp_infer": r.logp_infer.tolist(), "reward": r.reward, "advantage": r.advantage,
             "versions": None if r.versions is None else r.versions.tolist(), "group_id": r.group_id,
             "offset": r.offset} for r in pool]


def decode_pool(rows: Sequence[dict]) -> list[Response]:
    return [Response(**row) for row in rows]
