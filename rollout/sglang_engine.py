"""The SGLang rollout engine: one SGLang HTTP server in its own process group, driven through `rollout.types.Engine`.

`submit` sends every request at once as its own `/generate` call (prompt + already generated ids as `input_ids`,
`max_new_tokens = request.remaining`, `rid = request.id`) from a background asyncio thread; `step` returns the
calls that came back, in completion order. What SGLang 0.5.23 does, read from its source and checked on the CPU:

- Log-probs (`meta_info.output_token_logprobs`, the sampler's `logprobs`): with `temperature > 0` they are
  `log(softmax(logits / T))` taken BEFORE top-p / top-k filtering, i.e. temperature-scaled and untruncated, which
  is `logp_infer` as ringjax defines it (`ringjax/generate.py`). Greedy (`temperature=0`, which SGLang turns into
  `T=1, top_k=1`) gives `log_softmax(logits)`, as `ringjax.generate.greedy` does. The environment variable
  SGLANG_RETURN_ORIGINAL_LOGPROB=1 would switch SGLang to the unscaled distribution, so the engine removes it from
  the server's environment.
- Stops: a matched `stop_token_ids` entry is the last of `output_ids` (finish "stop"). SGLang also stops on the
  checkpoint's `eos_token_id` (config.json / generation_config.json) and there is no per-request way to keep
  `stop_token_ids` while ignoring those (`ignore_eos` drops both), so pass the eos ids in `stop_ids` as well.
- Abort (`/abort_request` with the rid, or `abort_all`): the pending `/generate` call returns normally with
  finish_reason `{"type": "abort"}` and the tokens and log-probs generated so far (a request still queued returns
  none). The server ignores an abort for a rid it has not registered yet, so `abort` repeats it until the call
  returns. A request that finished before the abort reached it comes back with its real finish.
- Versions: the server's `weight_version` is the engine's version; every reply carries `meta_info.weight_versions`,
  spans of output tokens per version, from which `Output.versions` is filled.

Weight updates (`update_weights`) pause the server with `/pause_generation` mode "retract" (running requests go
back to the waiting queue and drop their KV cache), load the weights, flush the prefix cache and
`/continue_generation`: requests in flight are re-prefilled by the new policy and continue, their later tokens
tagged with the new version (without the pause, SGLang's update would wait for every running request to end).
Two ways to load: "distributed" (default): `/begin_weight_update`, one `/update_weights_from_distributed` per
bucket, broadcast over a torch.distributed group (gloo on CPU, NCCL on GPU) that the trainer process joins as rank
0, `/end_weight_update` (SGLang 0.5.23 refuses tensor / distributed updates outside that session); "disk":
`save_pretrained` into a temporary folder and `/update_weights_from_disk`. If the distributed group cannot be
made, the engine warns, counts it in `stats["disk_fallbacks"]` and uses the disk from then on.

A server that exits is noticed at the next call: requests in flight come back from `step` as `finish="error"`
with the tail of the server's log, and `submit` / `update_weights` raise `SGLangServerError`.

Decode throughput: submit N requests with a fixed `max_tokens` and no stop ids, `run_to_completion`, and divide
the tokens by the wall time; the server log (`engine.log_path`, `log_level="info"`) also prints
"gen throughput (token/s)" every 40 decode steps.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import aiohttp
import numpy as np
from flax import nnx

from ringjax.model import LingConfig
from ringjax.model.model import Ling
from rollout import sglang_weights as sw
from rollout.types import Output, Request, check_request

log = logging.getLogger(__name__)

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sglang_server.py")
FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


class SGLangServerError(RuntimeError):
    """The SGLang server failed to start, died, or refused a control call."""


@dataclasses.dataclass(frozen=True)
class SGLangConfig:
    model_path: str  # HF folder (config.json + safetensors); SGLang needs no tokenizer files here
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port
    device: str | None = None  # "cpu" on CPU machines (with SGLANG_USE_CPU_ENGINE=1); None: SGLang's default
    dtype: str = "auto"  # "auto" runs a float32 checkpoint in float16: ask for "float32" to compare log-probs
    max_total_tokens: int | None = None  # KV cache size in tokens
    mem_fraction_static: float | None = None
    context_length: int | None = None  # None: the checkpoint's max_position_embeddings
    server_args: tuple[str, ...] = ()  # extra `sglang.launch_server` flags, e.g. ("--tp-size", "8")
    log_level: str = "warning"
    sleep_on_idle: bool = True  # an idle scheduler blocks on its sockets instead of spinning a CPU core at 100%
    fix_cpu_routed_scaling: bool | None = None  # apply the CPU MoE fix (see _sglang_server.py); None: env decides
    launcher: tuple[str, ...] = ()  # command before the server flags; () = python rollout/_sglang_server.py
    weight_sync: Literal["distributed", "disk"] = "distributed"
    sync_backend: str | None = None  # torch.distributed backend; None: "gloo" on CPU, "nccl" otherwise
    sync_master_addr: str = "127.0.0.1"  # where the server reaches this (the trainer's) process
    sync_dtype: str | None = None  # cast weights before sending ("bfloat16"); None: as given
    bucket_bytes: int = 64 << 20
    start_timeout_s: float = 300.0
    control_timeout_s: float = 600.0  # pause, updates, aborts
    request_timeout_s: float | None = None  # one /generate call; None: no limit
    max_connections: int = 4096  # concurrent /generate calls
    step_wait_s: float = 0.05  # how long `step` waits for a first finished request
    log_path: str | None = None  # server log; None: a temporary file removed by `close`

    def __post_init__(self):
        if self.weight_sync not in ("distributed", "disk"):
            raise ValueError(f"weight_sync={self.weight_sync!r}; expected 'distributed' or 'disk'")
        if self.bucket_bytes < 1:
            raise ValueError(f"bucket_bytes={self.bucket_bytes} must be >= 1")
        object.__setattr__(self, "server_args", tuple(self.server_args))
        object.__setattr__(self, "launcher", tuple(self.launcher))


@dataclasses.dataclass
class _Reply:
    body: dict | None = None
    error: str | None = None
    lost: bool = False  # the connection failed: maybe the server is exiting


@dataclasses.dataclass
class _Inflight:
    request: Request
    future: concurrent.futures.Future  # -> _Reply
    posted: bool = False  # the /generate call has been handed to the connection pool
    aborted: bool = False


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


class SGLangEngine:
    """`rollout.types.Engine` over one SGLang server (see the module docstring)."""

    def __init__(self, config: SGLangConfig, *, model_config: LingConfig | None = None,
                 env: Mapping[str, str] | None = None, version: int = 0):
        if config.model_path and os.path.isdir(config.model_path) and not os.path.exists(
                os.path.join(config.model_path, "config.json")):
            raise SGLangServerError(f"{config.model_path} has no config.json: not a model folder SGLang can load")
        self.config = config
        self.version = int(version)
        self.port = config.port or sw.free_port(config.host)
        self.url = f"http://{config.host}:{self.port}"
        self.stats: collections.Counter = collections.Counter()
        self.last_update_s: float | None = None
        self.last_update_method: str | None = None
        self.max_context: int | None = config.context_length  # None: the server's, which it does not publish
        self.server_ranks = 1
        self._model_config = model_config
        self._pending: dict[str, _Inflight] = {}
        self._ready: list[Output] = []  # rejected at submit, returned by the next step
        self._done: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._dead: str | None = None
        self._lost_check = -1e9  # when a lost connection last made us wait for the server to exit
        self._closed = False
        self._group: Any = None
        self._group_name = f"ringjax_{uuid.uuid4().hex[:8]}"
        self._sync_failed = False
        self._tmp = tempfile.mkdtemp(prefix="sglang_engine_")
        self._disk_dirs: list[str] = []
        self.log_path = config.log_path or os.path.join(self._tmp, "server.log")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sglang-engine-http", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession = self._run(self._open_session()).result()
        try:
            self._proc = self._launch(env)
            self._finalizer = weakref.finalize(self, _kill_group, self._proc)
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    # -- interface -------------------------------------------------------------------------------------------------
    def submit(self, requests: Sequence[Request]) -> None:
        self._require_alive("submit")
        for r in requests:
            why = check_request(r, self.max_context or sys.maxsize)  # the server also checks its context length
            if why is None and r.id in self._pending:
                why = f"request {r.id}: an earlier request with this id is still running"
            if why is not None:
                self._ready.append(Output.failed(r.id, why))
                self.stats["rejected"] += 1
                continue
            inflight = _Inflight(r, concurrent.futures.Future())
            self._pending[r.id] = inflight
            inflight.future = self._run(self._generate(inflight))
            inflight.future.add_done_callback(lambda _, rid=r.id: self._done.put(rid))
            self.stats["submitted"] += 1

    def step(self) -> list[Output]:
        out, self._ready = self._ready, []
        self._check_process()
        if not out and self._pending and self._done.empty() and self._dead is None:
            with contextlib.suppress(queue.Empty):
                self._done.put(self._done.get(timeout=self.config.step_wait_s))
        while True:
            try:
                rid = self._done.get_nowait()
            except queue.Empty:
                break
            inflight = self._pending.get(rid)
            if inflight is not None and inflight.future.done():
                out.append(self._output(self._pending.pop(rid)))
        if self._dead is not None:
            out += [self._output(self._pending.pop(rid)) for rid in list(self._pending)]
        return out

    def abort(self, ids: Sequence[str] | None = None) -> list[Output]:
        """Stops the given (default: all) requests; returns their partial outputs (finish "abort")."""
        targets = list(self._pending) if ids is None else [i for i in dict.fromkeys(ids) if i in self._pending]
        if not targets:
            return []
        self._check_process()
        for rid in targets:
            inflight = self._pending[rid]
            inflight.aborted = True
            if not inflight.posted:
                inflight.future.cancel()  # still waiting for a connection: the server never saw it
        deadline = time.monotonic() + self.config.control_timeout_s
        while self._dead is None and time.monotonic() < deadline:
            left = [rid for rid in targets if not self._pending[rid].future.done()]
            if not left:
                break
            payloads = [{"abort_all": True}] if ids is None else [{"rid": rid} for rid in left]
            with contextlib.suppress(Exception):
                self._run(self._post_all("/abort_request", payloads, 30)).result(timeout=30)
            concurrent.futures.wait([self._pending[rid].future for rid in left], timeout=0.5)
            self._check_process()
        out = [self._output(self._pending.pop(rid)) for rid in targets]
        self.stats["aborted"] += len(out)
        return out

    def update_weights(self, weights: Mapping[str, Any] | Ling | nnx.State, version: int,
                       method: Literal["distributed", "disk"] | None = None) -> None:
        """Loads `weights` (a `Ling`, its `nnx.State`, or flat {"moe_layers/wq": array}: `nnx.to_flat_state` paths
        joined by "/") into the server; tokens sampled afterwards carry `version`. Requests in flight continue
        under the new weights. `method` overrides `config.weight_sync` for this call. Sets `last_update_s` and
        `last_update_method` (the method that was used). A transfer that fails midway raises and leaves the server
        with a mix of old and new weights (SGLang loads bucket by bucket): update again before sampling."""
        self._require_alive("update_weights")
        method = method or self.config.weight_sync
        if method not in ("distributed", "disk"):
            raise ValueError(f"method={method!r}; expected 'distributed' or 'disk'")
        start = time.perf_counter()
        model = sw.as_model(weights, self.model_config)
        self._control("/pause_generation", {"mode": "retract"})
        try:
            used = self._sync_distributed(model, version) if method == "distributed" else None
            if used is None:
                self._sync_disk(model, version)
                used = "disk"
        except BaseException:
            if self._proc.poll() is None:
                with contextlib.suppress(Exception):
                    self._control("/continue_generation", {})
            raise
        self._control("/continue_generation", {})
        self.version = int(version)
        self.last_update_s = time.perf_counter() - start
        self.last_update_method = used
        self.stats["weight_updates"] += 1

    def num_pending(self) -> int:
        return len(self._pending) + len(self._ready)

    def alive(self) -> bool:
        self._check_process()
        return self._dead is None and not self._closed

    def close(self) -> None:
        """Kills the server's process group and releases everything; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._group is not None:
            sw.destroy_group(self._group)
            self._group = None
        finalizer = getattr(self, "_finalizer", None)  # absent when the launch itself failed
        if finalizer is not None:
            finalizer()
        for inflight in self._pending.values():
            inflight.future.cancel()
        self._pending.clear()
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._run(self._session.close()).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> SGLangEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter teardown or a half-built engine; the finalizer still kills the server
            pass

    @property
    def model_config(self) -> LingConfig:
        """The served model's config (given, or read from the checkpoint's config.json)."""
        if self._model_config is None:
            from ringjax.hf import read_config

            self._model_config = read_config(self.config.model_path)
        return self._model_config

    @property
    def pid(self) -> int:
        """The server's process id (= its process group id)."""
        return self._proc.pid

    def log_tail(self, chars: int = 6000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode(errors="replace")
        except OSError:
            return "(no server log)"

    # -- server process --------------------------------------------------------------------------------------------
    def _launch(self, env: Mapping[str, str] | None) -> subprocess.Popen:
        c = self.config
        cmd = list(c.launcher or (sys.executable, LAUNCHER))
        cmd += ["--model-path", c.model_path, "--host", c.host, "--port", str(self.port), "--dtype", c.dtype,
                "--skip-tokenizer-init", "--trust-remote-code", "--weight-version", str(self.version),
                "--log-level", c.log_level]
        for flag, value in (("--device", c.device), ("--max-total-tokens", c.max_total_tokens),
                            ("--mem-fraction-static", c.mem_fraction_static), ("--context-length", c.context_length)):
            if value is not None:
                cmd += [flag, str(value)]
        if c.sleep_on_idle:
            cmd.append("--sleep-on-idle")
        cmd += list(c.server_args)
        server_env = dict(os.environ if env is None else env)
        server_env.pop("SGLANG_RETURN_ORIGINAL_LOGPROB", None)  # would return unscaled log-probs (module docstring)
        server_env.pop("XLA_FLAGS", None)
        server_env["RINGJAX_SGLANG_PARENT_PID"] = str(os.getpid())  # _sglang_server.py exits when this process does
        if c.fix_cpu_routed_scaling is not None:
            server_env["SGLANG_CPU_ROUTED_SCALING_FIX"] = "1" if c.fix_cpu_routed_scaling else "0"
        with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
            return subprocess.Popen(cmd, env=server_env, stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise SGLangServerError(f"SGLang server for {self.config.model_path} exited with code {code} while "
                                        f"starting; log tail:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise SGLangServerError(f"SGLang server for {self.config.model_path} not ready after "
                                        f"{self.config.start_timeout_s} s; log tail:\n{self.log_tail()}")
            try:
                if self._run(self._get("/health", 5)).result(timeout=10) == 200:
                    break
            except Exception:
                pass
            time.sleep(0.25)
        model = self._run(self._get_json("/model_info", 30)).result(timeout=60)
        if model.get("model_path") != self.config.model_path:  # another server answered on this port
            raise SGLangServerError(f"the server on port {self.port} serves {model.get('model_path')!r}, not "
                                    f"{self.config.model_path!r}")
        info = self._run(self._get_json("/server_info", 30)).result(timeout=60)
        self.server_ranks = int(info.get("tp_size") or 1)  # ranks that join the weight-update group

    def _check_process(self) -> None:
        if self._dead is None and not self._closed and self._proc.poll() is not None:
            self._dead = f"SGLang server (pid {self._proc.pid}) exited with code {self._proc.returncode}"
            log.error("%s; log tail:\n%s", self._dead, self.log_tail(2000))

    def _require_alive(self, what: str) -> None:
        if self._closed:
            raise SGLangServerError(f"{what}: the engine is closed")
        self._check_process()
        if self._dead is not None:
            raise SGLangServerError(f"{what}: {self._dead}; start a new engine. Log tail:\n{self.log_tail(2000)}")

    # -- outputs ---------------------------------------------------------------------------------------------------
    def _output(self, inflight: _Inflight) -> Output:
        rid = inflight.request.id
        fut = inflight.future
        if fut.cancelled():
            if inflight.aborted:
                return Output(rid, [], [], [], "abort")
            return self._failed(rid, self._dead or "the engine dropped the request")
        if not fut.done():
            fut.cancel()
            return self._failed(rid, self._dead or "no reply from the SGLang server")
        reply: _Reply = fut.result()
        if reply.lost and self._dead is None and time.monotonic() - self._lost_check > 10:
            self._lost_check = time.monotonic()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=2)  # a server that is exiting closes its sockets before it is reaped
        if reply.error is not None:
            return self._failed(rid, reply.error)
        try:
            return self._parse(rid, reply.body, inflight)
        except Exception as e:  # a reply this engine does not understand is that request's error, not a crash
            return self._failed(rid, f"unexpected SGLang reply ({type(e).__name__}: {e}): {str(reply.body)[:500]}")

    def _failed(self, rid: str, error: str) -> Output:
        self._check_process()
        if self._dead is not None and self._dead not in error:
            error = f"{error}; {self._dead}. Log tail:\n{self.log_tail(2000)}"
        self.stats["errors"] += 1
        return Output.failed(rid, error)

    def _parse(self, rid: str, body: dict, inflight: _Inflight) -> Output:
        meta = body["meta_info"]
        tokens = np.asarray(body["output_ids"], np.int32)
        logprobs = np.asarray([row[0] for row in meta["output_token_logprobs"]], np.float32)
        if len(tokens) != len(logprobs):
            raise ValueError(f"{len(tokens)} output ids but {len(logprobs)} log-probs")
        reason = meta.get("finish_reason") or {}
        kind = reason.get("type") if isinstance(reason, dict) else reason
        if kind not in FINISH:
            raise ValueError(f"finish_reason {reason!r}")
        versions = np.full(len(tokens), int(meta.get("weight_version", self.version)), np.int32)
        for span in meta.get("weight_versions") or ():
            versions[span["start"]:span["end"]] = int(span["version"])
        error = None
        if kind == "abort" and not inflight.aborted:
            error = f"SGLang aborted the request: {reason.get('message')}"
        self.stats["tokens"] += len(tokens)
        return Output(rid, tokens, logprobs, versions, FINISH[kind], error)

    # -- weight sync -----------------------------------------------------------------------------------------------
    def _backend(self) -> str:
        return self.config.sync_backend or ("gloo" if self.config.device == "cpu" else "nccl")

    def _init_group(self) -> None:
        backend, port, world = self._backend(), sw.free_port(), 1 + self.server_ranks
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
        reply = self._control("/init_weights_update_group", {
            "master_address": self.config.sync_master_addr, "master_port": port, "rank_offset": 1,
            "world_size": world, "group_name": self._group_name, "backend": backend}, check=False)
        if not reply.get("success"):
            raise SGLangServerError(f"the server could not join the weight-update group: {reply.get('message')}")
        self._group = joined.result(timeout=timeout)

    def _drop_group(self) -> None:
        """Leaves the group after a failed transfer (its collectives may be out of step); the next update makes a
        new one."""
        if self._group is not None:
            sw.destroy_group(self._group)
            self._group = None
        if self._proc.poll() is None:
            with contextlib.suppress(Exception):
                self._control("/destroy_weights_update_group", {"group_name": self._group_name}, check=False)

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
        self._control("/begin_weight_update", {})
        try:
            self._broadcast(model, version)
        except BaseException:
            self._drop_group()
            if self._proc.poll() is None:
                with contextlib.suppress(Exception):
                    self._control("/end_weight_update", {})
            raise
        self._control("/end_weight_update", {})
        return "distributed"

    def _broadcast(self, model: Ling, version: int) -> None:
        buckets = sw.hf_buckets(model, self.config.bucket_bytes, self.config.sync_dtype)
        bucket = next(buckets)
        while bucket is not None:
            following = next(buckets, None)
            last = following is None  # flush the prefix cache and set the version once, with the last bucket
            payload = dict(bucket.payload(), group_name=self._group_name, flush_cache=last,
                           weight_version=str(version) if last else None)
            reply = self._run(self._post("/update_weights_from_distributed", payload, self.config.control_timeout_s))
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
        self._control("/update_weights_from_disk", {"model_path": path, "weight_version": str(version),
                                                    "flush_cache": True})
        for old in self._disk_dirs:  # the server now reads from `path`
            shutil.rmtree(old, ignore_errors=True)
        self._disk_dirs = [path]

    # -- HTTP (on the background event loop) -----------------------------------------------------------------------
    def _run(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _open_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.config.max_connections))

    async def _get(self, path: str, timeout: float) -> int:
        async with self._session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status

    async def _get_json(self, path: str, timeout: float) -> dict:
        async with self._session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return await resp.json(content_type=None)

    async def _post(self, path: str, payload: dict, timeout: float | None, parse: bool = True) -> Any:
        async with self._session.post(self.url + path, json=payload,
                                      timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            text = await resp.text()
        if not parse:
            return text
        try:
            body = json.loads(text) if text else {}
        except ValueError:
            body = {"success": False, "message": f"HTTP {resp.status}: {text[:500]}"}
        if resp.status != 200 and isinstance(body, dict):
            body.setdefault("success", False)
            body.setdefault("message", f"HTTP {resp.status}: {text[:500]}")
        return body

    async def _post_all(self, path: str, payloads: list[dict], timeout: float) -> list:
        return await asyncio.gather(*(self._post(path, p, timeout, parse=False) for p in payloads))

    def _control(self, path: str, payload: dict, check: bool = True) -> dict:
        try:
            body = self._run(self._post(path, payload, self.config.control_timeout_s)).result(
                timeout=self.config.control_timeout_s + 5)
        except Exception as e:
            self._check_process()
            dead = f"; {self._dead}. Log tail:\n{self.log_tail(2000)}" if self._dead else ""
            raise SGLangServerError(f"{path} failed: {type(e).__name__}: {e}{dead}") from e
        if check and isinstance(body, dict) and body.get("success") is False:
            raise SGLangServerError(f"{path} failed: {body.get('message')}")
        return body

    async def _generate(self, inflight: _Inflight) -> _Reply:
        r = inflight.request
        payload = {
            "rid": r.id,
            "input_ids": np.concatenate([r.prompt, r.generated]).tolist(),
            "sampling_params": {"temperature": r.sampling.temperature, "top_p": r.sampling.top_p,
                                "max_new_tokens": r.remaining, "stop_token_ids": list(r.sampling.stop_ids) or None},
            "return_logprob": True,
            "logprob_start_len": -1,
        }
        inflight.posted = True
        try:
            async with self._session.post(self.url + "/generate", json=payload,
                                          timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s)) as resp:
                if resp.status != 200:
                    return _Reply(error=f"SGLang /generate HTTP {resp.status}: {(await resp.text())[:1000]}")
                return _Reply(body=await resp.json(content_type=None))
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            return _Reply(error=f"SGLang /generate failed: {type(e).__name__}: {e}",
                          lost=isinstance(e, aiohttp.ClientConnectionError))


__all__ = ["SGLangConfig", "SGLangEngine", "SGLangServerError"]
