"""Weight updates of a running SGLang server (`SGLangEngine.update_weights`); the tensor packing and the trainer's
end of the process group are in `rollout.sglang.weights`.

An update pauses the server with `/pause_generation` mode "retract" (running requests go back to the waiting queue
and drop their KV cache), loads the weights, flushes the prefix cache and `/continue_generation`: requests in
flight are re-prefilled by the new policy and continue, their later tokens tagged with the new version (without
the pause, SGLang's update would wait for every running request to end). Two ways to load: "distributed"
(default): `/begin_weight_update`, one `/update_weights_from_distributed` per bucket, broadcast over a
torch.distributed group (gloo on CPU, NCCL on GPU) that the trainer process joins as rank 0, `/end_weight_update`
(SGLang 0.5.23 refuses tensor / distributed updates outside that session); "disk": `save_pretrained` into a
temporary folder and `/update_weights_from_disk`. If the distributed group cannot be made, this warns,
counts it in `stats["disk_fallbacks"]` and uses the disk from then on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import shutil
import threading
import uuid
from typing import Any, Literal

from ringjax.model.model import Ling
from rollout.sglang import weights as sw
from rollout.sglang.config import SGLangConfig
from rollout.sglang.server import SGLangServer, SGLangServerError

log = logging.getLogger(__name__)


class WeightSync:
    """Loads weights into `server`; disk copies go under `tmp`; counts into `stats` (the engine's)."""

    def __init__(self, server: SGLangServer, config: SGLangConfig, tmp: str, stats: collections.Counter):
        self._server = server
        self.config = config
        self.stats = stats
        self._tmp = tmp
        self._group: Any = None
        self._group_name = f"ringjax_{uuid.uuid4().hex[:8]}"
        self._sync_failed = False
        self._disk_dirs: list[str] = []

    def load(self, model: Ling, version: int, method: Literal["distributed", "disk"]) -> str:
        """Pauses the server, loads `model` tagged `version` and lets it continue; returns the method used."""
        self._server.control("/pause_generation", {"mode": "retract"})
        try:
            used = self._sync_distributed(model, version) if method == "distributed" else None
            if used is None:
                self._sync_disk(model, version)
                used = "disk"
        except BaseException:
            if self._server.running():
                with contextlib.suppress(Exception):
                    self._server.control("/continue_generation", {})
            raise
        self._server.control("/continue_generation", {})
        return used

    def close(self) -> None:
        """Leaves the weight-update group (the server's end goes with the server)."""
        if self._group is not None:
            sw.destroy_group(self._group)
            self._group = None

    def _backend(self) -> str:
        return self.config.sync_backend or ("gloo" if self.config.device == "cpu" else "nccl")

    def _init_group(self) -> None:
        backend, port, world = self._backend(), sw.free_port(), 1 + self._server.server_ranks
        sw.check_backend(backend)
        self._group_name = f"ringjax_{uuid.uuid4().hex[:8]}"
        timeout = min(self.config.control_timeout_s, 120.0)
        joined: concurrent.futures.Future = concurrent.futures.Future()

        def join():
            try:
                joined.set_result(sw.init_trainer_group(backend, self.config.sync_master_addr, port, world,
                                                        self._group_name, timeout))
            except BaseException as e:
                joined.set_exception(e)

        threading.Thread(target=join, name="sglang-engine-group", daemon=True).start()
        reply = self._server.control("/init_weights_update_group", {
            "master_address": self.config.sync_master_addr, "master_port": port, "rank_offset": 1,
            "world_size": world, "group_name": self._group_name, "backend": backend}, check=False)
        if not reply.get("success"):
            raise SGLangServerError(f"the server could not join the weight-update group: {reply.get('message')}")
        self._group = joined.result(timeout=timeout)

    def _drop_group(self) -> None:
        """Leaves the group after a failed transfer (its collectives may be out of step); the next update makes a
        new one."""
        self.close()
        if self._server.running():
            with contextlib.suppress(Exception):
                self._server.control("/destroy_weights_update_group", {"group_name": self._group_name}, check=False)

    def _sync_distributed(self, model: Ling, version: int) -> str | None:
        """Broadcasts the weights bucket by bucket; None if the group cannot be made (then: disk, from now on,
        counted in `stats["disk_fallbacks"]`)."""
        if self._group is None and not self._sync_failed:
            try:
                self._init_group()
            except Exception as e:
                self._sync_failed = True
                log.warning("distributed weight sync unavailable (%s); falling back to update_weights_from_disk", e)
        if self._sync_failed:
            self.stats["disk_fallbacks"] += 1
            return None
        self._server.control("/begin_weight_update", {})
        try:
            self._broadcast(model, version)
        except BaseException:
            self._drop_group()
            if self._server.running():
                with contextlib.suppress(Exception):
                    self._server.control("/end_weight_update", {})
            raise
        self._server.control("/end_weight_update", {})
        return "distributed"

    def _broadcast(self, model: Ling, version: int) -> None:
        buckets = sw.hf_buckets(model, self.config.bucket_bytes, self.config.sync_dtype)
        bucket = next(buckets)
        while bucket is not None:
            following = next(buckets, None)
            last = following is None  # flush the prefix cache and set the version once, with the last bucket
            payload = dict(bucket.payload(), group_name=self._group_name, flush_cache=last,
                           weight_version=str(version) if last else None)
            reply = self._server.run(self._server.post("/update_weights_from_distributed", payload,
                                                       self.config.control_timeout_s))
            sw.broadcast_bucket(self._group, bucket, self._backend())
            result = reply.result(timeout=self.config.control_timeout_s)
            if not result.get("success"):
                raise SGLangServerError(f"update_weights_from_distributed failed: {result.get('message')}")
            self.stats["sync_bytes"] += bucket.data.nbytes
            bucket = following

    def _sync_disk(self, model: Ling, version: int) -> None:
        from ringjax.hf import save_pretrained

        path = save_pretrained(model, os.path.join(self._tmp, f"weights-{version}-{uuid.uuid4().hex[:6]}"),
                               dtype=self.config.sync_dtype)
        self._server.control("/update_weights_from_disk", {"model_path": path, "weight_version": str(version),
                                                           "flush_cache": True})
        for old in self._disk_dirs:  # the server now reads from `path`
            shutil.rmtree(old, ignore_errors=True)
        self._disk_dirs = [path]
