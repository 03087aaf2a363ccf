"""A rollout worker as a Ray actor: one engine, a generation loop, finished outputs streamed into a shared queue.

The actor is threaded (`max_concurrency` > 1): the pool runs `run(attempt)` in one thread for the life of the
actor, while `submit`, `abort`, `update_weights` (whole, as a delta or in shards: `receive_weights`), `configure`
and `ping` arrive in others. One lock serialises every engine call; submitted requests wait in an inbox that the
loop moves into the engine before each `step()`.

Every queue item is `(worker_id, attempt, ticket, Output)`. The pool numbers each dispatch of a request with a
fresh `ticket` and each (re)start of a worker with a fresh `attempt`, so it can discard outputs that belong to a
superseded dispatch (see `rollout/ray_pool.py`). `queue.put` blocks while the queue is full: a worker whose
outputs are not consumed stops stepping (back-pressure). Outputs the loop has taken from the engine are no longer
abortable: they reach the queue, so `abort` never returns a request that will also show up there.

The constructor takes the worker id only: Ray hands an actor its constructor arguments again when it restarts it,
and an object-store reference or actor handle among them may be gone by then. What the worker works with comes with
its first `configure`, from the pool's live references: the engine factory, the queue, the weights. A worker
restarted by Ray runs `__init__` again (no engine, attempt -1) and does nothing until the pool `configure`s it
(factory, queue, current weights, a new attempt) and starts `run` again.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import ray

from ringjax.model import LingConfig
from rollout.jax_engine import JaxEngine
from rollout.numerics import EngineNumerics
from rollout.types import Engine, Output, Request
from rollout.shards import Assembly, Part
from rollout.weight_delta import DeltaMismatch, WeightDelta, apply_delta, checksum
from rollout.weights import model_from_flat, zero_weights

EngineFactory = Callable[[int], Engine]  # worker id -> engine; must pickle (it travels to the actor)
Item = tuple[int, int, int, Output]  # (worker id, attempt, ticket, output)


@dataclasses.dataclass(frozen=True)
class JaxEngineFactory:
    """Builds a `JaxEngine` inside a worker. `weights` may be an `ObjectRef` (put once, shared by every worker), or
    None: zeros until the trainer's processes send theirs (`RayEnginePool(send_shards=...)`). Each worker samples
    with its own key: `seed` mixed with the worker id."""

    config: LingConfig
    weights: Mapping[str, np.ndarray] | ray.ObjectRef | None
    slots: int = 8
    max_context: int = 512
    decode_chunk: int = 8
    seed: int = 0
    version: int = 0
    numerics: EngineNumerics = EngineNumerics()  # the engine's controlled mismatch (rollout.numerics)

    def __call__(self, worker_id: int = 0) -> JaxEngine:
        weights = ray.get(self.weights) if isinstance(self.weights, ray.ObjectRef) else self.weights
        weights = zero_weights(self.config) if weights is None else weights
        seed = int(np.random.SeedSequence([self.seed, worker_id]).generate_state(1)[0])
        return JaxEngine(model_from_flat(self.config, weights), slots=self.slots, max_context=self.max_context,
                         decode_chunk=self.decode_chunk, seed=seed, version=self.version, numerics=self.numerics)


@dataclasses.dataclass(frozen=True)
class SGLangEngineFactory:
    """Starts one SGLang server per worker (each on a free port of its node) from the same checkpoint folder."""

    config: Any  # rollout.sglang.engine.SGLangConfig
    model_config: LingConfig | None = None
    env: dict[str, str] | None = None  # the server's environment; None: the worker's

    def __call__(self, worker_id: int = 0):
        from rollout.sglang.engine import SGLangEngine
        return SGLangEngine(self.config, model_config=self.model_config, env=self.env)


class StaleAttempt(RuntimeError):
    """`run` was started for an attempt the worker is not in (it was restarted in between)."""


class RolloutWorker:
    """Ray actor body (the pool wraps it with `ray.remote`)."""

    def __init__(self, worker_id: int):
        self.worker_id = worker_id
        self._factory: EngineFactory | None = None  # these three come with the first `configure`
        self._engine: Engine | None = None
        self._queue = None
        self._weights: tuple[Any, int] | None = None  # last update_weights, to rebuild a broken engine
        self._attempt = -1  # -1: fresh (never configured, or restarted by Ray)
        self._lock = threading.Lock()  # engine and _tickets
        self._cv = threading.Condition()  # _inbox
        self._inbox: list[tuple[int, Request]] = []
        self._tickets: dict[str, int] = {}  # request id -> ticket, for requests inside the engine
        self._held = 0  # outputs taken from the engine, not yet in the queue
        self.stats: collections.Counter = collections.Counter()
        self._engine_stats: dict = {}
        self._assembly: Assembly | None = None  # a sharded update being received (rollout.shards)
        self._assembly_lock = threading.Lock()

    # -- called by the pool ------------------------------------------------------------------------------------------
    def configure(self, attempt: int, factory: EngineFactory, queue, weights: Mapping[str, Any] | None,
                  version: int) -> dict:
        """Starts `attempt`: builds the engine from `factory` if there is none yet, takes the output `queue`, drops
        any work of an earlier attempt and loads `weights` (None: keep the factory's)."""
        with self._lock:
            if self._engine is None:
                self._factory, self._engine = factory, factory(self.worker_id)
            self._queue = queue
            with self._cv:
                self._inbox.clear()
            if self._tickets:
                self._engine.abort()
                self._tickets.clear()
            if weights is not None:
                self._engine.update_weights(weights, version)
                self._weights = (weights, version)
            self._attempt = attempt
        return self.ping()

    def submit(self, items: Sequence[tuple[int, Request]], attempt: int) -> bool:
        """Queues (ticket, request) pairs; refuses (False) work sent to an earlier attempt of this worker."""
        if attempt != self._attempt:
            self.stats["stale_submits"] += 1
            return False
        with self._cv:
            self._inbox.extend(items)
            self._cv.notify()
        return True

    def abort(self, ids: Sequence[str] | None = None) -> list[Item]:
        """Stops the given (default: all) requests still held here; their partial outputs, tagged like queue items."""
        wanted = None if ids is None else set(ids)
        with self._lock:
            with self._cv:
                dropped = [(t, r) for t, r in self._inbox if wanted is None or r.id in wanted]
                self._inbox = [(t, r) for t, r in self._inbox if not (wanted is None or r.id in wanted)]
            outs = [(t, Output(r.id, [], [], [], "abort")) for t, r in dropped]
            try:
                partial = self._engine.abort(ids)
            except Exception as e:  # noqa: BLE001 - the requests come back as failed, the worker keeps serving
                partial = self._engine_failed(e)
            outs += [(self._tickets.pop(o.id), o) for o in partial if o.id in self._tickets]
        self.stats["aborted"] += len(outs)
        return [(self.worker_id, self._attempt, t, o) for t, o in outs]

    def update_weights(self, weights: Mapping[str, Any] | WeightDelta, version: int) -> int:
        """Loads `weights`, or a `WeightDelta` against the weights this worker received last (raises
        `DeltaMismatch` when it holds another version or a checksum differs: the pool then sends the full ones)."""
        if self._engine is None:  # restarted, not configured yet: `configure` brings the pool's current weights
            return version
        with self._lock:
            if isinstance(weights, WeightDelta):
                if self._weights is None:
                    raise DeltaMismatch(f"worker {self.worker_id}: a delta to version {weights.version} arrived, "
                                        f"but the worker holds no weights it received (only its factory's)")
                weights = apply_delta(self._weights[0], weights, self._weights[1])
            self._engine.update_weights(weights, version)
            self._weights = (weights, version)
        return version

    def receive_weights(self, version: int, sender: int, senders: int, index: int, count: int,
                        parts: Sequence[Part]) -> bool:
        """Bucket `index` of `count` of a sharded update from trainer process `sender` of `senders`
        (`rollout.shards.send_weights`); when the last bucket of `version` is in, builds the whole tensors and loads
        them (True). A bucket of a newer version drops an unfinished older one (counted)."""
        with self._assembly_lock:
            if self._assembly is None or self._assembly.version != version:
                if self._assembly is not None:
                    self.stats["assemblies_dropped"] += 1
                self._assembly = Assembly(version, senders)
            if not self._assembly.add(sender, index, count, parts):
                return False
            weights, self._assembly = self._assembly.weights(), None
        self.update_weights(weights, version)
        return True

    def weight_checksums(self) -> dict[str, int]:
        """{name: CRC-32} of the weights this worker received last (to check them against the sender's)."""
        with self._lock:
            return {} if self._weights is None else {k: checksum(np.asarray(v)) for k, v in self._weights[0].items()}

    def num_pending(self) -> int:
        return len(self._inbox) + len(self._tickets) + self._held

    def ping(self) -> dict:
        version = None if self._engine is None else int(self._engine.version)
        return {"worker_id": self.worker_id, "pid": os.getpid(), "attempt": self._attempt, "version": version,
                "pending": self.num_pending(), "held": self._held, "stats": dict(self.stats),
                "engine_stats": dict(self._engine_stats)}

    def run(self, attempt: int) -> dict:
        """The generation loop: steps the engine while it has work, puts finished outputs into the queue. Ends when
        a later `configure` moves the worker to another attempt (that attempt runs its own loop), and with
        {"queue_lost": why} when the queue actor is gone (the pool replaces it and reissues the work)."""
        if attempt != self._attempt:
            raise StaleAttempt(f"worker {self.worker_id}: run({attempt}) but the worker is in attempt {self._attempt}")
        while True:
            with self._cv:
                while not self._inbox and not self._tickets and attempt == self._attempt:
                    self._cv.wait(0.5)
            if attempt != self._attempt:
                return {"superseded": attempt}
            items = self._step()
            self._held = len(items)
            for item in items:
                try:
                    self._queue.put(item)  # blocks while the queue is full: back-pressure
                except ray.exceptions.RayActorError as e:
                    self._held = 0
                    return {"queue_lost": f"{type(e).__name__}: {e}"}
                self._held -= 1
                self.stats["outputs"] += 1

    # -- internals ---------------------------------------------------------------------------------------------------
    def _step(self) -> list[Item]:
        with self._lock:
            with self._cv:
                new, self._inbox = self._inbox, []
            try:
                if new:
                    self._tickets.update((r.id, t) for t, r in new)
                    self._engine.submit([r for _, r in new])
                outs = self._engine.step()
            except Exception as e:  # noqa: BLE001 - the requests come back as failed, the worker keeps serving
                outs = self._engine_failed(e)
            self._engine_stats = dict(getattr(self._engine, "stats", {}))
            items = [(self.worker_id, self._attempt, self._tickets.pop(o.id), o) for o in outs if o.id in self._tickets]
            self.stats["unknown_outputs"] += len(outs) - len(items)
            return items

    def _engine_failed(self, error: Exception) -> list[Output]:
        """`Output.failed` for every request in the engine (a batched step involves them all; partial tokens are
        lost); clears the engine, or rebuilds it from the factory and the last weights if it cannot."""
        self.stats["engine_errors"] += 1
        why = f"worker {self.worker_id}: engine failed: {type(error).__name__}: {error}"
        try:
            self._engine.abort()
        except Exception:  # noqa: BLE001
            self._engine = self._factory(self.worker_id)
            if self._weights is not None:
                self._engine.update_weights(*self._weights)
        return [Output.failed(i, why) for i in self._tickets]
