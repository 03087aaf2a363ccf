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
- Routing records (`config.return_routed_experts`; `rollout.sglang.generate`; on a CPU device the server needs the
  fix in `rollout.sglang.cpu_fix`, which it gets): every output carries `routes` and `context_routes` like the
  embedded JAX engine's. A reply without a usable record keeps its tokens, with `routes=None` (counted in
  `stats["routes_missing"]`, logged).

Weight updates (`update_weights`, `rollout.sglang.sync`) pause the server, load the weights over a
torch.distributed group ("distributed", default) or from disk ("disk"), and let it continue: requests in flight
continue under the new policy, their later tokens tagged with the new version.

The server process and its HTTP client are `rollout.sglang.server`; one `/generate` call and its parsing are
`rollout.sglang.generate`; the config is `rollout.sglang.config`.

A server that exits is noticed at the next call: requests in flight come back from `step` as `finish="error"`
with the tail of the server's log, and `submit` / `update_weights` raise `SGLangServerError`.

Decode throughput: submit N requests with a fixed `max_tokens` and no stop ids, `run_to_completion`, and divide
the tokens by the wall time; the server log (`engine.log_path`, `log_level="info"`) also prints
"gen throughput (token/s)" every 40 decode steps.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import queue
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from flax import nnx

from ringjax.model import LingConfig
from ringjax.model.model import Ling
from rollout.sglang import weights as sw
from rollout.sglang.config import SGLangConfig
from rollout.sglang.generate import Inflight, Reply, generate, parse_reply, split_routes
from rollout.sglang.server import SGLangServer, SGLangServerError, check_model_folder
from rollout.sglang.sync import WeightSync
from rollout.types import Output, Request, check_request

log = logging.getLogger(__name__)


class SGLangEngine:
    """`rollout.types.Engine` over one SGLang server (see the module docstring)."""

    def __init__(self, config: SGLangConfig, *, model_config: LingConfig | None = None,
                 env: Mapping[str, str] | None = None, version: int = 0):
        check_model_folder(config.model_path)
        self.config = config
        self.version = int(version)
        self.stats: collections.Counter = collections.Counter()
        self.last_update_s: float | None = None
        self.last_update_method: str | None = None
        self.max_context: int | None = config.context_length  # None: the server's, which it does not publish
        self._model_config = model_config
        self._pending: dict[str, Inflight] = {}
        self._ready: list[Output] = []  # rejected at submit, returned by the next step
        self._done: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._closed = False
        self._tmp = tempfile.mkdtemp(prefix="sglang_engine_")
        self.log_path = config.log_path or os.path.join(self._tmp, "server.log")
        self._server = SGLangServer(config, self.log_path)
        self._sync = WeightSync(self._server, config, self._tmp, self.stats)
        try:
            self._server.start(env, self.version)
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
            inflight = Inflight(r, concurrent.futures.Future())
            self._pending[r.id] = inflight
            inflight.future = self._server.run(generate(self._server.session, self._server.url, inflight,
                                                        self.config.request_timeout_s,
                                                        self.config.return_routed_experts))
            inflight.future.add_done_callback(lambda _, rid=r.id: self._done.put(rid))
            self.stats["submitted"] += 1

    def step(self) -> list[Output]:
        out, self._ready = self._ready, []
        self._server.check()
        if not out and self._pending and self._done.empty() and self._server.dead is None:
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
        if self._server.dead is not None:
            out += [self._output(self._pending.pop(rid)) for rid in list(self._pending)]
        return out

    def abort(self, ids: Sequence[str] | None = None) -> list[Output]:
        """Stops the given (default: all) requests; returns their partial outputs (finish "abort")."""
        targets = list(self._pending) if ids is None else [i for i in dict.fromkeys(ids) if i in self._pending]
        if not targets:
            return []
        self._server.check()
        for rid in targets:
            inflight = self._pending[rid]
            inflight.aborted = True
            if not inflight.posted:
                inflight.future.cancel()  # still waiting for a connection: the server never saw it
        deadline = time.monotonic() + self.config.control_timeout_s
        while self._server.dead is None and time.monotonic() < deadline:
            left = [rid for rid in targets if not self._pending[rid].future.done()]
            if not left:
                break
            payloads = [{"abort_all": True}] if ids is None else [{"rid": rid} for rid in left]
            with contextlib.suppress(Exception):
                self._server.run(self._server.post_all("/abort_request", payloads, 30)).result(timeout=30)
            concurrent.futures.wait([self._pending[rid].future for rid in left], timeout=0.5)
            self._server.check()
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
        used = self._sync.load(model, version, method)
        self.version = int(version)
        self.last_update_s = time.perf_counter() - start
        self.last_update_method = used
        self.stats["weight_updates"] += 1

    def num_pending(self) -> int:
        return len(self._pending) + len(self._ready)

    def alive(self) -> bool:
        self._server.check()
        return self._server.dead is None and not self._closed

    def close(self) -> None:
        """Kills the server's process group and releases everything; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._sync.close()
        self._server.kill()
        for inflight in self._pending.values():
            inflight.future.cancel()
        self._pending.clear()
        self._server.close()
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
        return self._server.pid

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def server_ranks(self) -> int:
        """The server's ranks (its TP size), which join the weight-update group."""
        return self._server.server_ranks

    def log_tail(self, chars: int = 6000) -> str:
        return self._server.log_tail(chars)

    def _require_alive(self, what: str) -> None:
        if self._closed:
            raise SGLangServerError(f"{what}: the engine is closed")
        self._server.check()
        dead = self._server.dead
        if dead is not None:
            raise SGLangServerError(f"{what}: {dead}; start a new engine. Log tail:\n{self.log_tail(2000)}")

    # -- outputs ---------------------------------------------------------------------------------------------------
    def _output(self, inflight: Inflight) -> Output:
        rid = inflight.request.id
        fut = inflight.future
        if fut.cancelled():
            if inflight.aborted:
                return Output(rid, [], [], [], "abort")
            return self._failed(rid, self._server.dead or "the engine dropped the request")
        if not fut.done():
            fut.cancel()
            return self._failed(rid, self._server.dead or "no reply from the SGLang server")
        reply: Reply = fut.result()
        if reply.lost:
            self._server.settle_lost()
        if reply.error is not None:
            return self._failed(rid, reply.error)
        try:
            out = parse_reply(rid, reply.body, self.version, inflight.aborted)
        except Exception as e:  # a reply this engine does not understand is that request's error, not a crash
            return self._failed(rid, f"unexpected SGLang reply ({type(e).__name__}: {e}): {str(reply.body)[:500]}")
        self.stats["tokens"] += len(out.tokens)
        if self.config.return_routed_experts and len(out.tokens):
            out = self._with_routes(out, inflight.request, reply.body)
        return out

    def _with_routes(self, out: Output, request: Request, body: dict) -> Output:
        """`out` with the reply's routing record; without one (kept tokens, record unknown) if it is unusable."""
        try:
            context_routes, routes = split_routes(body, len(request.prompt) + len(request.generated),
                                                  len(out.tokens), self.model_config)
        except (ValueError, TypeError) as e:
            self.stats["routes_missing"] += 1
            log.warning("request %s: no routing record: %s", out.id, e)
            return out
        return dataclasses.replace(out, routes=routes, context_routes=context_routes)

    def _failed(self, rid: str, error: str) -> Output:
        self._server.check()
        dead = self._server.dead
        if dead is not None and dead not in error:
            error = f"{error}; {dead}. Log tail:\n{self.log_tail(2000)}"
        self.stats["errors"] += 1
        return Output.failed(rid, error)


__all__ = ["SGLangConfig", "SGLangEngine", "SGLangServerError"]
