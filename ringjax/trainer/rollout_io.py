"""The trainer's side of rollouts: a resumable prompt stream for the scheduler, and finished groups -> `Response`s.

Generation itself lives in the `rollout` package (engines, C3PO++ scheduler, Ray workers); this module turns
what it produces into the trainer's GRPO records and keeps what a checkpoint must hold.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from ringjax.data import PromptRecord, iterator_state
from ringjax.losses import LossConfig, compute_advantages
from ringjax.model.config import LingConfig
from ringjax.trainer.c3po import Response
from rollout.c3po_pp import Finished
from rollout.routes import from_json, record_problem, to_json


class PromptStream:
    """(record, token ids) one prompt at a time from a grain iterator of prompt batches.

    `state()` is the iterator position plus the records of the current batch not handed out yet, so a resumed
    run draws exactly the prompts an uninterrupted one would have drawn."""

    def __init__(self, batches: Iterator[Sequence[PromptRecord]], encode: Callable[[str], list[int]],
                 buffer: Sequence[PromptRecord] = ()):
        self.batches, self.encode = batches, encode
        self.buffer = list(buffer)
        self.drawn: list[str] = []  # ids handed out since the caller last cleared it

    def __iter__(self):
        return self

    def __next__(self) -> tuple[PromptRecord, list[int]]:
        if not self.buffer:
            self.buffer = list(next(self.batches))
        record = self.buffer.pop(0)
        self.drawn.append(record.id)
        return record, self.encode(record.prompt)

    def state(self) -> dict:
        return {"data": iterator_state(self.batches), "buffer": [dataclasses.asdict(r) for r in self.buffer]}


def to_responses(finished: Sequence[Finished], loss: LossConfig, model: LingConfig | None = None,
                 router_replay: bool = False, counts: collections.Counter | None = None) -> list[Response]:
    """One `Response` per generated answer, with its group's GRPO advantage, per-token policy versions and the
    engine's routing record.

    With `model`, each record is checked against the model's MoE shape (`rollout.routes.record_problem`). A
    missing or mis-shaped record is left out of the response and counted in `counts["missing"]`; under
    `router_replay` the whole response is dropped instead and counted in `counts["dropped"]`, so no token
    is ever trained through experts the engine did not use. The group's other responses keep their advantages."""
    out = []
    counts = collections.Counter() if counts is None else counts
    for f in finished:
        adv = np.asarray(compute_advantages(jnp.asarray([f.rewards], jnp.float32), loss))[0]  # [G]
        for m, reward, a in zip(f.group.members, f.rewards, adv):
            record = m.routes
            if model is not None:
                k = model.num_experts_per_tok if model.num_moe_layers else 0
                problem = record_problem(record, len(f.group.prompt) + len(m.tokens) - 1, model.num_moe_layers, k,
                                         model.num_experts)
                if problem is not None:
                    if router_replay:
                        counts["dropped"] += 1
                        continue
                    counts["missing"] += 1
                    record = None
            out.append(Response(prompt_id=f.group.record.id, prompt=np.asarray(f.group.prompt, np.int32),
                                tokens=np.asarray(m.tokens, np.int32), logp_infer=np.asarray(m.logprobs, np.float32),
                                reward=float(reward), advantage=float(a), versions=np.asarray(m.versions, np.int32),
                                group_id=f.group.id, routes=record))
    return out


def encode_pool(pool: Sequence[Response]) -> list[dict]:
    """JSON form of untrained responses (saved with a checkpoint: nothing is lost on resume)."""
    return [{"prompt_id": r.prompt_id, "prompt": r.prompt.tolist(), "tokens": r.tokens.tolist(),
             "logp_infer": r.logp_infer.tolist(), "reward": r.reward, "advantage": r.advantage,
             "versions": None if r.versions is None else r.versions.tolist(), "group_id": r.group_id,
             "offset": r.offset, "routes": to_json(r.routes)} for r in pool]


def decode_pool(rows: Sequence[dict]) -> list[Response]:
    return [Response(**{**row, "routes": from_json(row.get("routes"))}) for row in rows]
