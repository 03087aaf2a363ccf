"""Weights sent from where they live: every trainer process sends the shards it holds, and no process gathers the
model.

A trainer sharded over several processes (`jax.distributed`) holds each parameter in pieces spread over their
devices, while a rollout engine needs whole tensors. `plan_parts` lists what this process sends: for every array,
its addressable shards whose `replica_id` is 0 (over all processes, every element of every tensor lies in exactly
one of them). `plan_buckets` groups them into transfers of at most `bucket_bytes` from their shapes alone, and
`send_weights` copies one bucket at a time to the host, puts it into Ray's object store once and hands it to every
receiving worker, so a process holds at most one bucket besides its share of the model. A bucket that a worker does
not acknowledge within `timeout_s` is sent again (receiving is idempotent) up to `retries` times; then
`WorkerTimeout` names the worker, the bucket and the version (`WorkerError` if the worker died).

The receiving end, `Assembly`, collects the buckets of one version from every sender and builds the whole tensors,
refusing a gap or an overlap by tensor name; `rollout.ray_worker.RolloutWorker.receive_weights` loads the result
into its engine when the last bucket arrives (Ring-1T's AState and Awex send shards from where they live the same
way, over RDMA or NCCL instead of an object store).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Part:
    """A block of tensor `name` (global `shape`) that starts at `start`; `data` is the block."""

    name: str
    shape: tuple[int, ...]
    start: tuple[int, ...]
    data: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Planned:
    name: str
    shape: tuple[int, ...]
    start: tuple[int, ...]
    nbytes: int
    source: Any  # the shard's device array (or the host array)

    def part(self, dtype) -> Part:
        data = np.asarray(self.source)
        if dtype is not None and jnp.issubdtype(data.dtype, jnp.floating):
            data = data.astype(dtype)
        return Part(self.name, self.shape, self.start, data)


def plan_parts(weights: Mapping[str, Any], dtype: str | None = None) -> list[_Planned]:
    """What this process sends of `weights` ({name: jax.Array or host array}), nothing copied yet. A host array
    (every process holds all of it) is sent by process 0 only. `dtype` casts floating tensors ("bfloat16")."""
    itemsize = None if dtype is None else jnp.dtype(dtype).itemsize
    planned = []
    for name, value in weights.items():
        if isinstance(value, jax.Array):
            shape = tuple(value.shape)
            size = itemsize if itemsize and jnp.issubdtype(value.dtype, jnp.floating) else value.dtype.itemsize
            for shard in value.addressable_shards:
                if shard.replica_id == 0:
                    start = tuple(s.indices(n)[0] for s, n in zip(shard.index, shape))
                    planned.append(_Planned(name, shape, start, int(np.prod(shard.data.shape)) * size, shard.data))
        elif jax.process_index() == 0:
            value = np.asarray(value)
            size = itemsize if itemsize and jnp.issubdtype(value.dtype, jnp.floating) else value.dtype.itemsize
            planned.append(_Planned(name, value.shape, (0,) * value.ndim, value.size * size, value))
    return planned


def plan_buckets(planned: Sequence[_Planned], bucket_bytes: int) -> list[list[_Planned]]:
    """Consecutive parts in buckets of at most `bucket_bytes` (a larger part gets its own)."""
    out, size = [], 0
    for p in planned:
        if not out or size + p.nbytes > bucket_bytes:
            out.append([])
            size = 0
        out[-1].append(p)
        size += p.nbytes
    return out


class Assembly:
    """The buckets of one weights `version` from `senders` senders, as they arrive (in any order, repeats
    allowed), and the whole tensors once all are in."""

    def __init__(self, version: int, senders: int):
        self.version, self.senders = int(version), int(senders)
        self._parts: dict[int, dict[int, list[Part]]] = {}  # sender -> bucket index -> parts
        self._counts: dict[int, int] = {}  # sender -> how many buckets it sends

    def add(self, sender: int, index: int, count: int, parts: Sequence[Part]) -> bool:
        """Takes bucket `index` of `count` from `sender`; True once every bucket of every sender is in."""
        if not 0 <= sender < self.senders or not 0 <= index < count:
            raise ValueError(f"bucket {index} of {count} from sender {sender}: out of range ({self.senders} senders)")
        if self._counts.setdefault(sender, count) != count:
            raise ValueError(f"sender {sender} announced {self._counts[sender]} buckets, now {count}")
        self._parts.setdefault(sender, {})[index] = list(parts)
        return self.complete

    @property
    def complete(self) -> bool:
        return len(self._counts) == self.senders and all(
            len(self._parts.get(s, {})) == n for s, n in self._counts.items())

    def weights(self) -> dict[str, np.ndarray]:
        """{name: whole tensor}; ValueError naming the tensor if its parts disagree, leave a gap or overlap."""
        if not self.complete:
            raise ValueError(f"version {self.version}: not every bucket has arrived")
        by_name: dict[str, list[Part]] = {}
        for buckets in self._parts.values():
            for parts in buckets.values():
                for p in parts:
                    by_name.setdefault(p.name, []).append(p)
        out = {}
        for name, parts in by_name.items():
            shape, dtype = parts[0].shape, parts[0].data.dtype
            if any(p.shape != shape or p.data.dtype != dtype for p in parts):
                raise ValueError(f"tensor {name!r}: its parts disagree on the shape or dtype")
            value, covered = np.empty(shape, dtype), np.zeros(shape, np.uint8)
            for p in parts:
                where = tuple(slice(s, s + n) for s, n in zip(p.start, p.data.shape))
                if any(s.stop > n for s, n in zip(where, shape)):
                    raise ValueError(f"tensor {name!r}: a part at {p.start} of shape {p.data.shape} exceeds {shape}")
                value[where] = p.data
                covered[where] += 1
            if not np.all(covered == 1):
                gaps, overlaps = int(np.count_nonzero(covered == 0)), int(np.count_nonzero(covered > 1))
                raise ValueError(f"tensor {name!r}: {gaps} elements no part holds, {overlaps} held by several")
            out[name] = value
        return out


def send_weights(workers: Sequence[Any] | Mapping[Any, Any], weights: Mapping[str, Any], version: int, *,
                 dtype: str | None = None, bucket_bytes: int = 64 << 20, timeout_s: float = 600.0, retries: int = 2,
                 sender: int | None = None, senders: int | None = None) -> dict:
    """Sends this process's parts of `weights` to every worker (Ray actor handles with `receive_weights`, such as
    `RolloutWorker`; a mapping {label: handle} names them by label in errors, else by position), bucket by bucket;
    every trainer process calls it with the same `version`. Returns {"buckets", "bytes", "seconds", "resent"}.
    `sender` / `senders` default to this process's index and count."""
    import ray
    from ray.exceptions import RayActorError

    from rollout.ray_pool import WorkerError, WorkerTimeout

    sender = jax.process_index() if sender is None else sender
    senders = jax.process_count() if senders is None else senders
    plan = plan_buckets(plan_parts(weights, dtype), bucket_bytes)
    count = max(1, len(plan))  # a sender with nothing to send still says so, with one empty bucket
    stats, t0 = {"buckets": count, "bytes": 0, "resent": 0}, time.perf_counter()
    for index in range(count):
        parts = [p.part(dtype) for p in plan[index]] if plan else []
        ref = ray.put(parts)
        stats["bytes"] += sum(p.data.nbytes for p in parts)
        waiting = dict(workers.items() if isinstance(workers, Mapping) else enumerate(workers))
        for attempt in range(retries + 1):
            calls = {w.receive_weights.remote(version, sender, senders, index, count, ref): k
                     for k, w in waiting.items()}
            done, _ = ray.wait(list(calls), num_returns=len(calls), timeout=timeout_s)
            for call in done:
                try:
                    ray.get(call)  # a worker that refuses the bucket raises here, naming why
                except RayActorError as e:
                    raise WorkerError(f"worker {calls[call]}: died during receive_weights of bucket {index + 1}/"
                                      f"{count} (version {version}, sender {sender}): {e}", calls[call]) from e
                waiting.pop(calls[call])
            if not waiting:
                break
            stats["resent"] += len(waiting) if attempt < retries else 0
        if waiting:
            k = next(iter(waiting))
            raise WorkerTimeout(f"worker {k}: receive_weights of bucket {index + 1}/{count} (version {version}, "
                                f"sender {sender}) did not answer in {timeout_s} s, {retries + 1} tries", k)
    stats["seconds"] = time.perf_counter() - t0
    return stats
