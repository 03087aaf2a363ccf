"""Score batches of responses off the caller's thread, in parallel, with a per-call timeout.

Reward functions run in worker threads (code rewards spend their time waiting on sandbox subprocesses, math
rewards in sympy). Every item resolves to a `RewardResult`: a function that raises scores 0 with the error, one
that runs past `timeout_s` (counted from when a worker starts it) scores 0 with "timeout", and both are counted in
`stats`; the reasons reward functions give for their zeros (`Verdict.reason`) are counted in `reasons`.
Each call runs in its own `CancelScope`: on timeout its sandboxes are killed and it can start no new one (a
further `run_python` raises `Cancelled`), so a timed-out code reward stops within moments; `stats["killed"]`
counts the sandboxes killed so. A Python thread cannot be killed, so a call that is still running is abandoned: its
thread is retired (it exits when the call returns, its late result discarded) and a fresh worker takes its place,
so the pool keeps its full width. `stats["abandoned"]` is the number of such calls still running.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import heapq
import itertools
import math
import threading
import time
from collections.abc import Iterable

from ringjax.data import PromptRecord
from rollout.rewards.base import RewardFn, RewardResult, Verdict, as_text
from rollout.rewards.router import RewardRouter
from rollout.sandbox import CancelScope

Item = tuple[PromptRecord, str | bytes]


@dataclasses.dataclass(eq=False)
class _Job:
    record: PromptRecord
    response: str | bytes
    future: cf.Future
    finished: bool = False  # the worker returned (guarded by the pool lock)
    expired: bool = False  # the watchdog resolved it as a timeout (guarded by the pool lock)
    scope: CancelScope = dataclasses.field(default_factory=CancelScope)  # its sandboxes, killed on timeout


class RewardPool:
    """`submit(items)` -> futures of `RewardResult`s at once; `score(items)` -> the results, blocking."""

    def __init__(self, reward_fn: RewardFn | None = None, workers: int = 8, timeout_s: float = 60.0,
                 keep_errors: int = 100):
        if workers < 1 or not timeout_s > 0:
            raise ValueError(f"RewardPool needs workers >= 1 and timeout_s > 0, got {workers}, {timeout_s}")
        self.reward_fn = reward_fn or RewardRouter()
        self.timeout_s = timeout_s
        self.errors: collections.deque[str] = collections.deque(maxlen=keep_errors)  # latest, for logging
        self._stats = collections.Counter({"scored": 0, "errors": 0, "timeouts": 0, "invalid_utf8": 0,
                                           "abandoned": 0, "killed": 0})
        self._reasons: collections.Counter[str] = collections.Counter()
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job | None] = collections.deque()
        self._deadlines: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._closed = False
        for _ in range(workers):
            self._spawn_worker()
        self._watchdog = threading.Thread(target=self._watch, name="reward-watchdog", daemon=True)
        self._watchdog.start()

    # ------------------------------------------------------------------------------------------ public

    def submit(self, items: Iterable[Item]) -> list[cf.Future]:
        """Queue `items` ((record, response) pairs); each future resolves to a `RewardResult`, never raises."""
        jobs = [_Job(record, response, cf.Future()) for record, response in items]
        with self._cond:
            if self._closed:
                raise RuntimeError("RewardPool.submit after close()")
            self._queue.extend(jobs)
            self._cond.notify_all()
        return [job.future for job in jobs]

    def score(self, items: Iterable[Item]) -> list[RewardResult]:
        """The `RewardResult` of every item, in order; returns when all are scored or timed out."""
        return [f.result() for f in self.submit(items)]

    @property
    def stats(self) -> dict[str, int]:
        with self._cond:
            return dict(self._stats)

    @property
    def reasons(self) -> dict[str, int]:
        """Zero scores counted by the reason their reward function gave (`Verdict.reason`)."""
        with self._cond:
            return dict(self._reasons)

    def close(self) -> None:
        """Stop the workers once the queue is drained (queued items are still scored)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ workers

    def _spawn_worker(self) -> None:
        threading.Thread(target=self._work, name="reward-worker", daemon=True).start()

    def _next_job(self) -> _Job | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            job = self._queue.popleft()
            if job.future.set_running_or_notify_cancel():
                heapq.heappush(self._deadlines, (time.monotonic() + self.timeout_s, next(self._seq), job))
                self._cond.notify_all()  # the watchdog may need to wake earlier
                return job
            job.finished = True  # cancelled by the caller before it started
            return job

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            if job.finished:
                continue
            result = self._call(job)
            with self._cond:
                job.finished = True
                if job.expired:  # the watchdog answered for it and started a replacement: retire
                    self._stats["abandoned"] -= 1
                    return
                self._stats["errors" if result.error else "scored"] += 1
                if result.error:
                    self.errors.append(f"prompt {job.record.id}: {result.error}")
                elif result.reason is not None:
                    self._reasons[result.reason] += 1
            job.future.set_result(result)

    def _call(self, job: _Job) -> RewardResult:
        try:
            text, repaired = as_text(job.response)
            if repaired:
                with self._cond:
                    self._stats["invalid_utf8"] += 1
            with job.scope:
                out = self.reward_fn(job.record, text)
            verdict = out if isinstance(out, Verdict) else Verdict(float(out))
            score = float(verdict.score)
            if not math.isfinite(score):
                raise ValueError(f"reward function returned {score}")
            return RewardResult(score, reason=verdict.reason if score == 0.0 else None)
        except Exception as e:  # a reward function's bug must not stop the run: score 0, count, keep the reason
            return RewardResult(0.0, f"{type(e).__name__}: {e}", reason="error")

    def _watch(self) -> None:
        while True:
            expired = []
            with self._cond:
                now = time.monotonic()
                while self._deadlines and (self._deadlines[0][2].finished or self._deadlines[0][0] <= now):
                    _, _, job = heapq.heappop(self._deadlines)
                    if not job.finished:
                        job.expired = True
                        self._stats["timeouts"] += 1
                        self._stats["abandoned"] += 1
                        self.errors.append(f"prompt {job.record.id}: timeout after {self.timeout_s} s")
                        expired.append(job)
                if not expired:
                    if self._closed and not self._deadlines and not self._queue:
                        return
                    self._cond.wait(self._deadlines[0][0] - now if self._deadlines else None)
            for job in expired:
                job.scope.cancel()
                with self._cond:
                    self._stats["killed"] += job.scope.killed
                self._spawn_worker()
                job.future.set_result(RewardResult(0.0, f"timeout after {self.timeout_s} s", reason="timeout"))
