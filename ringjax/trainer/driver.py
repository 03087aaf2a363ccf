"""`Driver`: a trainer of several processes (`jax.distributed`) generating with Ray workers or SGLang servers.

Every process of such a trainer holds only its shards of the model, and the rollout workers are one pool: process 0
(the leader) runs it, the scheduler and the rewards, and the other processes (followers) wait for what it
publishes. Two things cross: weight updates, which every process takes part in (each sends the shards it holds,
`rollout.shards.send_weights`: no process gathers the model), and results (a step's packed batch, an evaluation),
which the leader computes and every follower receives. A leader that fails publishes its error, so the followers
raise too instead of waiting.

The messages go through the key-value store of JAX's coordination service (the one `jax.distributed` runs for
every multi-process job, which Orbax uses for its barriers too), pickled and cut into pieces of at most 2 MiB
(`CHUNK`). A follower waits for the leader's next message for up to `timeout_s` (a rollout can take long: the
default is a day); the leader waits for each follower's answer to a weight update for up to `timeout_s` too, and
an error there names the process.
"""

from __future__ import annotations

import itertools
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ringjax.sharding import coordination_client, process_layout

T = TypeVar("T")
CHUNK = 2 << 20  # bytes per key-value entry
WeightsFn = Callable[[], Mapping[str, Any]]  # the model's current flat weights (jax.Arrays, sharded)
_instances = itertools.count()  # every process makes its Drivers in the same order: same keys


class LeaderFailed(RuntimeError):
    """The leader (process 0) failed; its error, as text."""


def _client():
    client = coordination_client()
    if client is None:
        raise RuntimeError("a Driver needs jax.distributed.initialize() first (mesh.distributed: true)")
    return client


def rollout_driver(name: str, rollout) -> Driver | None:
    """The Driver of loop `name` for a trainer of several processes whose rollouts run in Ray workers (`rollout`:
    an `RLConfig.rollout`; process 0 drives the workers); None with one process or rollouts on the mesh."""
    if process_layout()[1] == 1 or not rollout.workers:
        return None
    return Driver(name, dtype=rollout.weight_dtype, send_timeout_s=rollout.rpc_timeout_s)


class Driver:
    """Messages between the leader and the followers of one loop. Every process makes the same Drivers in the same
    order (the keys are `name` and that order: keys of different loops never meet). `leader` is process 0."""

    def __init__(self, name: str, *, timeout_s: float = 86400.0, dtype: str | None = None,
                 bucket_bytes: int = 64 << 20, send_timeout_s: float = 600.0):
        self.name, self.timeout_ms = f"{name}-{next(_instances)}", int(timeout_s * 1000)
        self.index, self.processes = process_layout()  # JAX's backends may not have started (Ray forks before)
        self.leader = self.index == 0
        self.dtype, self.bucket_bytes, self.send_timeout_s = dtype, bucket_bytes, send_timeout_s
        self._client, self._seq, self._kept = _client(), 0, 0  # _kept: the oldest message not deleted
        self._workers: dict[str, Any] = {}  # follower: actor handles by name

    # -- the wire --------------------------------------------------------------------------------------------------
    def _key(self, seq: int, *rest) -> str:
        return "/".join(["ringjax", self.name, str(seq), *map(str, rest)])

    def _put(self, key: str, value: Any) -> None:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        for i, piece in enumerate(pieces):
            self._client.key_value_set_bytes(f"{key}/{i}", piece)
        self._client.key_value_set(f"{key}/n", str(len(pieces)))  # last: a reader sees whole messages only

    def _get(self, key: str, what: str) -> Any:
        try:
            n = int(self._client.blocking_key_value_get(f"{key}/n", self.timeout_ms))
        except Exception as e:  # noqa: BLE001 - the coordination service raises its own error types
            raise TimeoutError(f"process {self.index}: no {what} ({key}) within "
                               f"{self.timeout_ms / 1000:.0f} s: {e}") from e
        return pickle.loads(b"".join(self._client.blocking_key_value_get_bytes(f"{key}/{i}", self.timeout_ms)
                                     for i in range(n)))

    def _publish(self, kind: str, payload: Any) -> int:
        seq, self._seq = self._seq, self._seq + 1
        self._put(self._key(seq), (kind, payload))
        return seq

    # -- leader ----------------------------------------------------------------------------------------------------
    def send_shards(self, weights: Mapping[str, Any], workers: Mapping[str, Any], version: int,
                    address: str | None = None) -> dict:
        """Leader: has every process send its shards of the weights to `workers` ({actor name: handle}, in Ray's
        namespace `rollout.ray_pool.NAMESPACE`), this one its part of `weights`; returns this process's send
        statistics once every process has sent. A worker that failed the transfer in any process raises
        `WorkerError` (`WorkerTimeout`) with its name; any other failure of a follower, `RuntimeError` naming it."""
        import ray

        from rollout.ray_pool import WorkerError, WorkerTimeout

        address = address or ray.get_runtime_context().gcs_address
        seq = self._publish("weights", {"names": list(workers), "version": int(version), "address": address,
                                        "auth": os.environ.get("RAY_AUTH_MODE")})
        error, stats = None, {}
        try:
            stats = self._send(weights, workers, version)
        except WorkerError as e:
            error = e
        for p in range(1, self.processes):
            answer = self._get(self._key(seq, "ack", p), f"answer of process {p} to weight update {version}")
            if error is None and answer is not None:
                kind = {"timeout": WorkerTimeout, "worker": WorkerError}.get(answer["kind"])
                message = f"process {p}: {answer['message']}"
                error = kind(message, answer["worker"]) if kind else RuntimeError(message)
        for old in range(self._kept, seq + 1):  # every follower has read these: it answered `seq`
            self._client.key_value_delete(self._key(old))
        self._kept = seq + 1
        if error is not None:
            raise error
        return stats

    def share(self, fn: Callable[[], T], weights: WeightsFn | None = None) -> T:
        """Every process: `fn()`'s result, computed by the leader. Followers serve weight updates meanwhile (each
        sends its part of `weights()`). An error of the leader's `fn` is published; followers raise `LeaderFailed`."""
        if not self.leader:
            return self.follow(weights)
        try:
            result = fn()
        except BaseException as e:
            self._publish("error", f"{type(e).__name__}: {e}")
            raise
        self._publish("result", result)
        return result

    # -- followers -------------------------------------------------------------------------------------------------
    def follow(self, weights: WeightsFn | None) -> Any:
        """Follower: serves the leader's weight updates until it publishes a result (returned) or an error."""
        while True:
            seq = self._seq
            kind, payload = self._get(self._key(seq), f"message {seq} of the leader's {self.name!r} loop")
            self._seq += 1
            if kind == "result":
                return payload
            if kind == "error":
                raise LeaderFailed(f"process 0 failed: {payload}")
            self._serve(seq, payload, weights)

    def _serve(self, seq: int, command: dict, weights: WeightsFn | None) -> None:
        """Sends this process's shards as `command` asks and answers the leader: None, or what failed. A worker's
        failure is the leader's to handle (it restarts the worker); any other failure ends this process too."""
        from rollout.ray_pool import WorkerError, WorkerTimeout

        answer, failure = None, None
        try:
            if weights is None:
                raise RuntimeError(f"{self.name}: a weight update arrived, but this process has no weights to send")
            self._send(weights(), self._handles(command), command["version"])
        except WorkerError as e:
            answer = {"kind": "timeout" if isinstance(e, WorkerTimeout) else "worker", "worker": e.worker,
                      "message": str(e)}
        except Exception as e:  # noqa: BLE001 - the leader raises it, naming this process
            answer, failure = {"kind": "other", "worker": None, "message": f"{type(e).__name__}: {e}"}, e
        self._put(self._key(seq, "ack", self.index), answer)
        if failure is not None:
            raise failure

    def _handles(self, command: dict) -> dict[str, Any]:
        if command["auth"] and "ray" not in sys.modules:
            os.environ.setdefault("RAY_AUTH_MODE", command["auth"])  # read when Ray is imported
        import ray

        from rollout.ray_pool import NAMESPACE

        if not ray.is_initialized():
            ray.init(address=command["address"], namespace=NAMESPACE, logging_level="warning")
        for name in command["names"]:
            if name not in self._workers:
                self._workers[name] = ray.get_actor(name, namespace=NAMESPACE)
        return {name: self._workers[name] for name in command["names"]}

    def _send(self, weights: Mapping[str, Any], workers: Mapping[str, Any], version: int) -> dict:
        from rollout.shards import send_weights

        return send_weights(workers, weights, version, dtype=self.dtype, bucket_bytes=self.bucket_bytes,
                            timeout_s=self.send_timeout_s)
