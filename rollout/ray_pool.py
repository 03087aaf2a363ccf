"""`RayEnginePool`: the `Engine` interface over rollout workers that run as Ray actors (`rollout/ray_worker.py`).

Requests go to the least-loaded live worker; finished outputs come back through one `ray.util.queue.Queue`
(its `maxsize` bounds what workers may run ahead of the consumer). The pool is poll-driven like any engine, so a
scheduler can use a local `JaxEngine` or the pool interchangeably.

Bookkeeping: every dispatch of a request gets a fresh ticket, every (re)start of a worker a fresh attempt; the pool
keeps `ticket -> (request, worker, attempt)` for everything not yet answered. An output is accepted only if its
ticket is outstanding on the worker attempt it came from; anything else (a request answered already, the output
of a superseded dispatch) is dropped and counted in `stats["duplicates"]`. Each request is answered exactly once.

Failures: each worker runs its loop as one long actor call, so its death surfaces as that call failing
(`RayActorError`, or `RayTaskError` if the loop itself broke), as does any other call to it. Then the pool
1. takes what the dead worker already put into the queue, and reissues every other request it held, from the
   original `Request` (partial tokens on the dead worker are lost, the request is not), to the live workers;
2. waits, without blocking `step()`, for Ray to restart the actor (`max_restarts`; fresh state; Ray refuses calls
   while it restarts, so the pool asks again every 0.2 s for up to `restart_timeout` s) or, if Ray will not (the
   actor is dead for good, its loop broke, the restart failed or took too long), starts a replacement actor; then
   sends it the factory, the queue, the current weights and version and a new attempt, and starts its loop again;
3. raises `WorkerPoolError` once one worker has failed more than `max_restarts` times.

Hangs: a worker that stops answering without dying (a stopped process, a wedged node) is a failure like a death.
`step()` pings every live worker every `heartbeat_interval` s (`ping` runs in its own actor thread, so a long
engine step or a worker blocked on the full queue still answers); one ping unanswered for `heartbeat_timeout` s
fails the worker with `WorkerTimeout`, which kills the actor and replaces it as above, its requests reissued.
Every other call the pool waits on has a deadline too (`rpc_timeout`: `configure`, including a recovery's,
`abort`, `update_weights`), and an expired one fails that worker with a `WorkerTimeout` naming the worker and the
call.

The queue is an actor too. If it dies, the pool starts a new one and moves every worker to a new attempt on it
(`configure`: the engine is kept, its work dropped), reissuing every request not yet accepted; whatever sat in the
lost queue is generated again, and outputs of the old attempts that still arrive are discarded as duplicates. A
worker whose `put` meets the dead queue ends its loop with `{"queue_lost": why}` instead of failing, so it is not
restarted for it. More than `max_restarts` lost queues raise `WorkerPoolError`.

A restarted actor gets its constructor arguments again, so they hold nothing that may be gone by then: the worker is
built from its index alone, and what it works with, the engine factory, the queue and the weights, comes with
`configure`, from references the pool keeps (Ray warns about constructor arguments in the object store for actors
with `max_restarts`, https://github.com/ray-project/ray/issues/53727).

`start_ray` is how ringjax starts or joins Ray. Ray starts its processes through `subprocess` with a `preexec_fn`,
which forks the calling process: start Ray before JAX starts its backends' threads (the pipeline does), or JAX
rightly warns about `os.fork()`. Authentication is Ray's (https://docs.ray.io/en/latest/ray-security/token-auth.html):
a local cluster gets token authentication, by default since Ray 2.59 (with a notice saying so) or because
`RAY_AUTH_MODE=token` was set before Ray was imported (the pipeline sets it); a joined cluster keeps its own.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import ray
from flax import nnx
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError
from ray.util.queue import Empty, Queue

from rollout.weight_delta import DeltaMismatch, cast_weights, make_delta
from rollout.weights import flat_weights
from rollout.ray_worker import EngineFactory, Item, RolloutWorker
from rollout.types import Output, Request

log = logging.getLogger(__name__)
_RemoteWorker = ray.remote(RolloutWorker)
_BACKLOG = -1  # worker index of requests waiting for a live worker
NAMESPACE = "ringjax"  # Ray namespace of named workers (`RayEnginePool(name=...)`): `ray.get_actor(name, NAMESPACE)`


class WorkerPoolError(RuntimeError):
    """The pool gave up: a worker failed more often than `max_restarts` allows."""


class WorkerError(Exception):
    """A call to a worker failed; says which worker and which call (`worker`: its label, where the raiser knew
    it)."""

    def __init__(self, message: str, worker: Any = None):
        super().__init__(message)
        self.worker = worker


class WorkerTimeout(WorkerError, TimeoutError):
    """A worker did not answer a call (or a heartbeat) in time."""


def start_ray(address: str | None = None, **init_kwargs) -> bool:
    """Starts a local Ray cluster (`address` None and no `RAY_ADDRESS` in the environment) or joins the one at
    `address`, unless Ray is up already; True when this call started or joined it (the caller then shuts it down).
    Ray's INFO lines (it started, it generated a token) stay out of the console (`logging_level`); its warnings
    still reach it."""
    if ray.is_initialized():
        return False
    init_kwargs.setdefault("logging_level", logging.WARNING)
    local = address is None and not os.environ.get("RAY_ADDRESS")
    ray.init(address="local" if local else address, **init_kwargs)  # "local": never a cluster found on this host
    return True


@dataclasses.dataclass
class _Worker:
    handle: Any
    attempt: int = 0
    alive: bool = False
    loop: ray.ObjectRef | None = None  # the running `run` call; resolves only if the worker fails
    recovering: ray.ObjectRef | None = None  # `configure` of a new attempt, in flight
    recovering_by: float = 0.0  # when that `configure` must have answered (rpc_timeout)
    retry_at: float = 0.0  # when to send `configure` again (Ray refuses calls while it restarts the actor)
    give_up_at: float = 0.0  # the restart is taking too long: replace the actor
    failures: int = 0
    version: int = 0  # the weights version this attempt holds
    awaiting: bool = False  # configured, its loop not started: waits for the trainer's shards (`send_shards`)
    ping: ray.ObjectRef | None = None  # the heartbeat in flight
    ping_sent: float = 0.0
    last_seen: float = 0.0  # when the worker last answered a heartbeat (or started its loop)


@dataclasses.dataclass
class _Ticket:
    request: Request
    worker: int = _BACKLOG
    attempt: int = -1


class RayEnginePool:
    """Engine interface over `num_workers` Ray actors, each building its engine from `factory(worker_id)`.

    Weights (`update_weights`): whole, put into the object store once per update; with `delta`, as a
    `rollout.weight_delta.WeightDelta` against the previous update; `weight_dtype` casts them first ("bfloat16").
    With `name`, the workers are named actors (`worker_names`: "NAME/k", a replacement "NAME/k.2", ...; namespace
    `NAMESPACE`), so that trainer processes other than this one can send them their shards
    (`rollout.shards.send_weights`).

    With `send_shards`, the pool holds no weights: `send_shards({actor name: handle}, version)` has every trainer
    process send its shards of the current weights to those workers (`ringjax.trainer.driver.Driver.send_shards`)
    and returns once they hold them; `update_weights` calls it for every worker, and a worker that (re)starts waits,
    held out of dispatch, until `step()` has sent it the current version the same way (`stats["resyncs"]`). Until
    the first `update_weights`, no worker takes requests. Needs `name`."""

    def __init__(self, factory: EngineFactory, num_workers: int, *, queue_size: int = 64, address: str | None = None,
                 max_restarts: int = 3, num_cpus: float = 0, runtime_env: dict | None = None,
                 max_concurrency: int = 4, poll_timeout: float = 0.05, abort_timeout: float = 120.0,
                 restart_timeout: float = 300.0, heartbeat_interval: float = 5.0, heartbeat_timeout: float = 60.0,
                 rpc_timeout: float = 600.0, delta: bool = False, weight_dtype: str | None = None,
                 name: str | None = None, send_shards: Callable[[Mapping[str, Any], int], Any] | None = None):
        if send_shards is not None and name is None:
            raise ValueError("RayEnginePool(send_shards=...) needs a name: the trainer processes find workers by it")
        if num_workers < 1 or queue_size < 1 or max_concurrency < 2:
            raise ValueError(f"num_workers={num_workers} and queue_size={queue_size} must be >= 1, "
                             f"max_concurrency={max_concurrency} >= 2 (the loop occupies one thread)")
        if not 0 < heartbeat_interval < heartbeat_timeout or rpc_timeout <= 0:
            raise ValueError(f"heartbeat_interval={heartbeat_interval} must be > 0 and below heartbeat_timeout="
                             f"{heartbeat_timeout}; rpc_timeout={rpc_timeout} must be > 0")
        self._owns_ray = start_ray(address)
        self.max_restarts, self.poll_timeout, self.abort_timeout = max_restarts, poll_timeout, abort_timeout
        self.restart_timeout = restart_timeout
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_interval, heartbeat_timeout
        self.rpc_timeout = rpc_timeout
        self._options = dict(num_cpus=num_cpus, max_restarts=max_restarts, max_task_retries=0,
                             max_concurrency=max_concurrency, runtime_env=runtime_env)
        self._factory = ray.put(factory)  # held here, sent with every `configure`: each (re)started worker needs it
        self._queue_size = queue_size
        self._queue = Queue(maxsize=queue_size, actor_options={"num_cpus": 0})
        self.delta, self.weight_dtype, self._send_shards = delta, weight_dtype, send_shards
        self._weights_ref: ray.ObjectRef | None = None  # the current weights in the object store; None: the factory's
        self._pending_weights: dict[str, np.ndarray] | None = None  # the current weights if not put yet (delta mode)
        self._sent: tuple[dict[str, np.ndarray], int] | None = None  # delta mode: the weights sent last, the version
        self._tickets: dict[int, _Ticket] = {}
        self._by_id: dict[str, int] = {}
        self._next_ticket = 0
        self._ready: list[Output] = []  # accepted, not yet returned by step()
        self._error: WorkerPoolError | None = None
        self._closed = False
        self.stats: collections.Counter = collections.Counter()
        self.name, self._spawned = name, collections.Counter()
        self.worker_names: list[str | None] = [None] * num_workers  # with `name`: each worker's actor name
        self._workers = [_Worker(self._spawn(i)) for i in range(num_workers)]
        infos = []
        calls = [w.handle.configure.remote(0, self._factory, self._queue, None, 0) for w in self._workers]
        for i, call in enumerate(calls):
            try:
                infos.append(ray.get(call, timeout=rpc_timeout))
            except GetTimeoutError as e:
                self.close()
                raise WorkerTimeout(f"worker {i}: configure did not answer in {rpc_timeout} s") from e
            except (RayActorError, RayTaskError) as e:
                self.close()
                raise WorkerPoolError(f"worker {i} failed to start: {e}") from e
        self.version = infos[0]["version"]
        for w, info in zip(self._workers, infos):
            w.version = info["version"] if send_shards is None else -1  # -1: the factory's, not the trainer's
            self._start_loop(w)

    # -- Engine interface --------------------------------------------------------------------------------------------
    def submit(self, requests: Sequence[Request]) -> None:
        self._check_usable()
        ids = [r.id for r in requests]
        clash = sorted(set(ids) & set(self._by_id)) or sorted(i for i, n in collections.Counter(ids).items() if n > 1)
        if clash:
            raise ValueError(f"RayEnginePool.submit: requests {clash[:3]} are already pending")
        for r in requests:
            self._new_ticket(r)
        self._dispatch()

    def step(self) -> list[Output]:
        self._check_usable()
        self._check_workers()
        self._dispatch()
        if self._tickets:
            self._collect(0.0 if self._ready else self.poll_timeout)
        out, self._ready = self._ready, []
        return out

    def abort(self, ids: Sequence[str] | None = None) -> list[Output]:
        """Partial outputs (finish="abort") of the given (default: all) pending requests. A request that finished
        before the abort reached its worker comes back with its final output here instead; either way, once
        `abort` returns, none of `ids` is pending and none will come out of `step()`."""
        self._check_usable()
        wanted = set(self._by_id) | {o.id for o in self._ready} if ids is None else set(ids)
        self._abort_backlog(wanted)
        by_worker = collections.defaultdict(list)
        for i in wanted & set(self._by_id):
            by_worker[self._tickets[self._by_id[i]].worker].append(i)
        calls = {k: self._workers[k].handle.abort.remote(v) for k, v in by_worker.items() if k != _BACKLOG}
        for k, ref in calls.items():
            try:
                self._accept_all(ray.get(ref, timeout=self.rpc_timeout))
            except GetTimeoutError:
                self._failed(k, WorkerTimeout(f"worker {k}: abort did not answer in {self.rpc_timeout} s"))
            except (RayActorError, RayTaskError) as e:
                self._failed(k, e)
        deadline = time.monotonic() + self.abort_timeout
        while wanted & set(self._by_id):  # outputs that had left their worker: in or on the way to the queue
            if time.monotonic() > deadline:
                raise TimeoutError(f"abort: no output for {sorted(wanted & set(self._by_id))[:3]} "
                                   f"after {self.abort_timeout} s")
            self._check_workers(resync=False)
            self._abort_backlog(wanted)
            self._collect(self.poll_timeout)
        out = [o for o in self._ready if o.id in wanted]
        self._ready = [o for o in self._ready if o.id not in wanted]
        return out

    def update_weights(self, weights: nnx.Module | nnx.State | Mapping[str, Any] | ray.ObjectRef, version: int) -> None:
        """Puts the weights into the object store once (or takes an `ObjectRef` of a flat mapping put already); every
        worker loads that one copy. Blocks until the live workers hold them (tokens sampled afterwards carry
        `version`); recovering workers get them when they come back.

        With `delta`, what goes into the object store is a `WeightDelta` against the weights sent last (kept here on
        the host); a worker that cannot apply it (it holds another version, a checksum differs) gets the full
        weights instead, counted in `stats["delta_repairs"]`. `stats["sync_bytes"]` counts what was put."""
        self._check_usable()
        if self._send_shards is not None:  # the trainer's processes send their shards
            self.version = int(version)
            self._sync([k for k, w in enumerate(self._workers) if w.alive or w.awaiting])
            return
        if isinstance(weights, ray.ObjectRef):
            flat, ref = None, weights
        else:
            flat = cast_weights(weights if isinstance(weights, Mapping) else flat_weights(weights), self.weight_dtype)
            ref = None
        send, is_delta = ref, False
        if self.delta and flat is not None and self._sent is not None:
            delta = make_delta(self._sent[0], flat, self._sent[1], version)
            send, is_delta = ray.put(delta), True
            self.stats["sync_bytes"] += delta.nbytes
            self.stats["delta_updates"] += 1
        self._sent = (flat, int(version)) if self.delta and flat is not None else None
        self._weights_ref, self._pending_weights, self.version = ref, flat, int(version)
        if send is None:
            send = self._current_weights()
        calls = {k: w.handle.update_weights.remote(send, version) for k, w in enumerate(self._workers) if w.alive}
        for k, call in calls.items():
            try:
                try:
                    ray.get(call, timeout=self.rpc_timeout)
                except RayTaskError as e:
                    if not is_delta or not isinstance(e.as_instanceof_cause(), DeltaMismatch):
                        raise
                    log.warning("worker %d: the weight delta did not apply (%s); sending the full weights", k,
                                e.as_instanceof_cause())
                    self.stats["delta_repairs"] += 1
                    ray.get(self._workers[k].handle.update_weights.remote(self._current_weights(), version),
                            timeout=self.rpc_timeout)
                self._workers[k].version = int(version)
            except GetTimeoutError:
                self._failed(k, WorkerTimeout(f"worker {k}: update_weights did not answer in {self.rpc_timeout} s"))
            except RayActorError as e:
                self._failed(k, e)
            except RayTaskError as e:  # the weights do not fit the engine: every worker refuses them alike
                raise e.as_instanceof_cause() from None

    def _sync(self, ks: list[int]) -> None:
        """`send_shards` of the current version to workers `ks`; a worker that fails it is failed (and comes back
        later), the others are sent again; then they take requests."""
        pending = list(ks)
        while pending:
            try:
                self._send_shards({self.worker_names[k]: self._workers[k].handle for k in pending}, self.version)
                break
            except WorkerError as e:
                if e.worker not in self.worker_names or self.worker_names.index(e.worker) not in pending:
                    raise
                k = self.worker_names.index(e.worker)
                pending.remove(k)
                self._failed(k, e)
        for k in pending:
            w = self._workers[k]
            w.version = self.version
            if w.awaiting:
                w.awaiting = False
                self.stats["resyncs"] += 1
                log.info("worker %d holds version %d again (attempt %d)", k, self.version, w.attempt)
                self._start_loop(w)

    def _current_weights(self) -> ray.ObjectRef | None:
        """The full current weights in the object store (put now if only a delta went there so far); None: the
        factory's."""
        if self._weights_ref is None and self._pending_weights is not None:
            self._weights_ref = ray.put(self._pending_weights)
            self.stats["sync_bytes"] += sum(v.nbytes for v in self._pending_weights.values())
            self.stats["full_updates"] += 1
            self._pending_weights = None
        return self._weights_ref

    def num_pending(self) -> int:
        return len(self._tickets) + len(self._ready)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in getattr(self, "_workers", []):
            ray.kill(w.handle, no_restart=True)
        if hasattr(self, "_queue"):
            self._queue.shutdown(force=True)
        if self._owns_ray:
            ray.shutdown()

    def __enter__(self) -> RayEnginePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- introspection -----------------------------------------------------------------------------------------------
    @property
    def workers(self) -> list:
        """The actor handles, by worker index."""
        return [w.handle for w in self._workers]

    def loads(self) -> list[int]:
        """Pending requests per worker, as the pool assigned them."""
        load = collections.Counter(t.worker for t in self._tickets.values())
        return [load[k] for k in range(len(self._workers))]

    # -- internals ---------------------------------------------------------------------------------------------------
    def _spawn(self, index: int):
        options = dict(self._options)
        if self.name is not None:  # named, so that other processes find it (`worker_names`)
            self._spawned[index] += 1
            n = self._spawned[index]
            self.worker_names[index] = f"{self.name}/{index}" + (f".{n}" if n > 1 else "")
            options.update(name=self.worker_names[index], namespace=NAMESPACE)
        return _RemoteWorker.options(**options).remote(index)  # no reference: see the module docstring

    def _start_loop(self, w: _Worker) -> None:
        w.alive, w.recovering, w.ping, w.last_seen = True, None, None, time.monotonic()
        w.loop = w.handle.run.remote(w.attempt)

    def _heartbeats(self) -> None:
        """Pings the live workers; fails one whose ping has gone unanswered for `heartbeat_timeout` s."""
        now = time.monotonic()
        for k, w in enumerate(self._workers):
            if not w.alive:
                continue
            if w.ping is not None:
                if ray.wait([w.ping], timeout=0)[0]:  # answered, or failed: a death shows on the loop call
                    w.ping, w.last_seen = None, now
                elif now - w.ping_sent > self.heartbeat_timeout:
                    self.stats["hung"] += 1
                    self._failed(k, WorkerTimeout(f"worker {k} (attempt {w.attempt}): no answer to a heartbeat "
                                                  f"for {now - w.ping_sent:.1f} s (heartbeat_timeout="
                                                  f"{self.heartbeat_timeout})"))
                    continue
            if w.ping is None and now - w.last_seen >= self.heartbeat_interval:
                w.ping, w.ping_sent = w.handle.ping.remote(), now

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("RayEnginePool is closed")

    def _new_ticket(self, request: Request) -> int:
        t = self._next_ticket
        self._next_ticket += 1
        self._tickets[t] = _Ticket(request)
        self._by_id[request.id] = t
        return t

    def _dispatch(self) -> None:
        live = [k for k, w in enumerate(self._workers)
                if w.alive and (self._send_shards is None or w.version == self.version)]
        backlog = [t for t, tk in self._tickets.items() if tk.worker == _BACKLOG]
        if not live or not backlog:
            return
        load = collections.Counter(tk.worker for tk in self._tickets.values())
        batches = collections.defaultdict(list)
        for t in backlog:
            k = min(live, key=lambda k: load[k])
            load[k] += 1
            tk = self._tickets[t]
            tk.worker, tk.attempt = k, self._workers[k].attempt
            batches[k].append((t, tk.request))
        for k, batch in batches.items():
            self._workers[k].handle.submit.remote(batch, self._workers[k].attempt)  # a failure shows on the loop call

    def _collect(self, timeout: float) -> None:
        """Accepts what has arrived in the queue, waiting up to `timeout` s for the first item."""
        try:
            items = [self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()]
            n = self._queue.qsize()
            items += self._queue.get_nowait_batch(n) if n else []
        except Empty:
            return
        except RayActorError as e:
            self._queue_lost(f"{type(e).__name__}: {e}")
            return
        self._accept_all(items)

    def _reissue(self, held_by) -> None:
        """Every pending request whose worker index satisfies `held_by` goes back to the backlog on a new ticket."""
        for t, tk in list(self._tickets.items()):
            if held_by(tk.worker):
                del self._tickets[t]
                self._new_ticket(tk.request)
                self.stats["reissued"] += 1

    def _queue_lost(self, why: str) -> None:
        """The queue actor died: a new queue, every worker to a new attempt on it, every pending request reissued."""
        self.stats["queues_lost"] += 1
        log.warning("the output queue failed (%s): a new queue, %d requests reissued", why,
                    sum(tk.worker != _BACKLOG for tk in self._tickets.values()))
        if self.stats["queues_lost"] > self.max_restarts:
            self._error = WorkerPoolError(f"the output queue failed {self.stats['queues_lost']} times "
                                          f"(max_restarts={self.max_restarts}); last: {why}")
            raise self._error
        ray.kill(self._queue.actor, no_restart=True)
        self._queue = Queue(maxsize=self._queue_size, actor_options={"num_cpus": 0})
        self._reissue(lambda worker: worker != _BACKLOG)
        now = time.monotonic()
        for w in self._workers:
            if w.alive or w.recovering is not None or w.awaiting:  # a worker waiting for its retry keeps waiting
                w.alive, w.loop, w.recovering, w.ping, w.awaiting = False, None, None, None, False
                w.attempt += 1
                w.retry_at, w.give_up_at = 0.0, now + self.restart_timeout

    def _accept_all(self, items: Sequence[Item]) -> None:
        for worker, attempt, t, output in items:
            tk = self._tickets.get(t)
            if tk is None or (tk.worker, tk.attempt) != (worker, attempt) or tk.request.id != output.id:
                self.stats["duplicates"] += 1
                continue
            del self._tickets[t], self._by_id[output.id]
            self._ready.append(output)
            self.stats["outputs"] += 1

    def _abort_backlog(self, wanted: set[str]) -> None:
        for i in wanted & set(self._by_id):
            t = self._by_id[i]
            if self._tickets[t].worker == _BACKLOG:
                self._accept_all([(_BACKLOG, -1, t, Output(i, [], [], [], "abort"))])

    def _check_workers(self, resync: bool = True) -> None:
        """Heartbeats, recoveries; `resync`: workers back from a restart get the trainer's shards now (not inside
        `abort`, which may run after a train step, before `update_weights` names the new version)."""
        self._heartbeats()
        self._recover()
        awaiting = [k for k, w in enumerate(self._workers) if w.awaiting]
        if resync and awaiting:
            self._sync(awaiting)

    def _recover(self) -> None:
        """Starts the recovery of failed workers and takes the answers of recoveries in flight."""
        now = time.monotonic()
        for k, w in enumerate(self._workers):
            if not w.alive and w.recovering is not None and now > w.recovering_by:
                self._failed(k, WorkerTimeout(f"worker {k} (attempt {w.attempt}): configure did not answer in "
                                              f"{self.rpc_timeout} s"))
        for w in self._workers:
            if not w.alive and not w.awaiting and w.recovering is None and now >= w.retry_at:
                w.recovering = w.handle.configure.remote(w.attempt, self._factory, self._queue,
                                                         self._current_weights(), self.version)
                w.recovering_by = now + self.rpc_timeout
        pending = {(w.loop if w.alive else w.recovering): k for k, w in enumerate(self._workers)}
        pending.pop(None, None)
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in done:
            k, w = pending[ref], self._workers[pending[ref]]
            try:
                info = ray.get(ref)
            except ActorUnavailableError as e:
                if not w.alive and time.monotonic() < w.give_up_at:  # still restarting: ask again shortly
                    w.recovering, w.retry_at = None, time.monotonic() + 0.2
                else:
                    self._failed(k, e)
                continue
            except (RayActorError, RayTaskError) as e:
                self._failed(k, e)
                continue
            if w.alive and isinstance(info, dict) and "queue_lost" in info:  # its `put` met a dead queue
                self._queue_lost(f"worker {k}: {info['queue_lost']}")
                return  # every worker moved to a new attempt: what `done` holds is stale
            if w.alive:  # `run` returned: it never should
                self._failed(k, RuntimeError(f"worker {k}: generation loop returned {info!r}"))
                continue
            if info["attempt"] != w.attempt:  # configured, then restarted again before we looked
                self._failed(k, RuntimeError(f"worker {k}: restarted during recovery"))
                continue
            w.version = info["version"]
            if self._send_shards is not None:  # held out until the trainer's processes send it their shards
                w.awaiting = True
                continue
            if self._current_weights() is not None and w.version != self.version:  # weights changed meanwhile
                try:
                    w.version = ray.get(w.handle.update_weights.remote(self._current_weights(), self.version),
                                        timeout=self.rpc_timeout)
                except GetTimeoutError:
                    self._failed(k, WorkerTimeout(f"worker {k}: update_weights did not answer in "
                                                  f"{self.rpc_timeout} s"))
                    continue
                except (RayActorError, RayTaskError) as e:
                    self._failed(k, e)
                    continue
            log.info("worker %d is back (attempt %d)", k, w.attempt)
            self._start_loop(w)

    def _failed(self, k: int, error: Exception) -> None:
        """Worker `k` failed: reissue what it held, start its recovery (see the module docstring)."""
        w = self._workers[k]
        was_alive, w.alive, w.loop, w.recovering, w.ping, w.awaiting = w.alive, False, None, None, None, False
        w.failures += 1
        self.stats["restarts"] += 1
        log.warning("worker %d (attempt %d) failed: %s: %s", k, w.attempt, type(error).__name__, error)
        if was_alive:
            self._collect(0.0)  # keep what it finished before dying
        self._reissue(lambda worker: worker == k)
        if w.failures > self.max_restarts:
            self._error = WorkerPoolError(f"worker {k} failed {w.failures} times (max_restarts={self.max_restarts}); "
                                          f"last error: {type(error).__name__}: {error}")
            raise self._error
        if not (was_alive and isinstance(error, ActorUnavailableError)):
            # Ray is not restarting it (dead for good, its loop broke, or the restart failed): replace the actor.
            ray.kill(w.handle, no_restart=True)
            w.handle = self._spawn(k)
            self.stats["replaced"] += 1
        w.attempt += 1
        w.retry_at, w.give_up_at = 0.0, time.monotonic() + self.restart_timeout
