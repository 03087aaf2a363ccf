"""One SGLang HTTP server for `rollout.sglang.engine.SGLangEngine`: its process, and the HTTP client that drives it.

The server runs our launcher `rollout/sglang/_server_main.py` (SGLang's `sglang.launch_server` plus opt-in CPU
fixes, `rollout.sglang.cpu_fix`) in its own process group, on a free port unless one is given, with its output in
a log file. The launcher is told this process's pid and kills its group once this process is gone; `kill` (and a
`weakref.finalize`, which also runs at interpreter exit) kills the group from this side.
SGLANG_RETURN_ORIGINAL_LOGPROB is removed from the server's environment: it would make SGLang return unscaled
log-probs (see `rollout.sglang.engine`). A CPU server with routing records gets SGLANG_CPU_ROUTED_EXPERTS_FIX=1:
without it SGLang 0.5.23 cannot start it.

A server that exits is noticed by `check` at the engine's next call: `dead` then says how it ended, and control
calls that fail add the tail of its log to their `SGLangServerError`.

HTTP goes through one aiohttp session on an asyncio loop in a background thread (`run` hands it a coroutine), so
the engine's thousands of concurrent `/generate` calls and its control calls share one connection pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import aiohttp

from rollout.sglang.config import SGLangConfig
from rollout.sglang.weights import free_port

log = logging.getLogger(__name__)

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_server_main.py")


class SGLangServerError(RuntimeError):
    """The SGLang server failed to start, died, or refused a control call."""


def check_model_folder(path: str) -> None:
    if path and os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        raise SGLangServerError(f"{path} has no config.json: not a model folder SGLang can load")


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


class SGLangServer:
    """The server process and its HTTP client: `start` launches it and waits until it serves `config.model_path`."""

    def __init__(self, config: SGLangConfig, log_path: str):
        self.config = config
        self.log_path = log_path
        self.port = config.port or free_port(config.host)
        self.url = f"http://{config.host}:{self.port}"
        self.server_ranks = 1  # ranks that join the weight-update group (the server's TP size)
        self.dead: str | None = None  # how the server ended, once `check` has seen it exit
        self.proc: subprocess.Popen | None = None
        self._closed = False
        self._lost_check = -1e9  # when a lost connection last made us wait for the server to exit
        self._finalizer: weakref.finalize | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sglang-engine-http", daemon=True)
        self._thread.start()
        self.session: aiohttp.ClientSession = self.run(self._open_session()).result()

    # -- process ---------------------------------------------------------------------------------------------------
    def start(self, env: Mapping[str, str] | None, version: int) -> None:
        self.proc = self._launch(env, version)
        self._finalizer = weakref.finalize(self, _kill_group, self.proc)
        self._wait_ready()

    @property
    def pid(self) -> int:
        """The server's process id (= its process group id)."""
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        """Sets `dead` (and logs the log's tail) once the server has exited."""
        if self.dead is None and not self._closed and self.proc.poll() is not None:
            self.dead = f"SGLang server (pid {self.proc.pid}) exited with code {self.proc.returncode}"
            log.error("%s; log tail:\n%s", self.dead, self.log_tail(2000))

    def settle_lost(self) -> None:
        """After a lost connection: gives a server that is exiting (it closes its sockets before it is reaped) a
        moment to be reaped, at most once every 10 s, so that `check` sees it."""
        if self.dead is None and time.monotonic() - self._lost_check > 10:
            self._lost_check = time.monotonic()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)

    def log_tail(self, chars: int = 6000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode(errors="replace")
        except OSError:
            return "(no server log)"

    def kill(self) -> None:
        """Kills the server's process group (if it was launched); `check` ignores the exit from then on."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def close(self) -> None:
        """Kills the server and stops the HTTP client; idempotent."""
        self.kill()
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self.run(self.session.close()).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def _launch(self, env: Mapping[str, str] | None, version: int) -> subprocess.Popen:
        c = self.config
        cmd = list(c.launcher or (sys.executable, LAUNCHER))
        cmd += ["--model-path", c.model_path, "--host", c.host, "--port", str(self.port), "--dtype", c.dtype,
                "--skip-tokenizer-init", "--trust-remote-code", "--weight-version", str(version),
                "--log-level", c.log_level]
        for flag, value in (("--device", c.device), ("--max-total-tokens", c.max_total_tokens),
                            ("--mem-fraction-static", c.mem_fraction_static), ("--context-length", c.context_length)):
            if value is not None:
                cmd += [flag, str(value)]
        if c.sleep_on_idle:
            cmd.append("--sleep-on-idle")
        if c.return_routed_experts:
            cmd.append("--enable-return-routed-experts")
        cmd += list(c.server_args)
        server_env = dict(os.environ if env is None else env)
        server_env.pop("SGLANG_RETURN_ORIGINAL_LOGPROB", None)  # would return unscaled log-probs (module docstring)
        server_env.pop("XLA_FLAGS", None)
        server_env["RINGJAX_SGLANG_PARENT_PID"] = str(os.getpid())  # _server_main.py exits when this process does
        if c.fix_cpu_routed_scaling is not None:
            server_env["SGLANG_CPU_ROUTED_SCALING_FIX"] = "1" if c.fix_cpu_routed_scaling else "0"
        if c.return_routed_experts and c.device == "cpu":  # the records' host cache would need CUDA (cpu_fix.py)
            server_env["SGLANG_CPU_ROUTED_EXPERTS_FIX"] = "1"
        with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
            return subprocess.Popen(cmd, env=server_env, stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise SGLangServerError(f"SGLang server for {self.config.model_path} exited with code {code} while "
                                        f"starting; log tail:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise SGLangServerError(f"SGLang server for {self.config.model_path} not ready after "
                                        f"{self.config.start_timeout_s} s; log tail:\n{self.log_tail()}")
            try:
                if self.run(self._get("/health", 5)).result(timeout=10) == 200:
                    break
            except Exception:
                pass
            time.sleep(0.25)
        model = self.run(self._get_json("/model_info", 30)).result(timeout=60)
        if model.get("model_path") != self.config.model_path:  # another server answered on this port
            raise SGLangServerError(f"the server on port {self.port} serves {model.get('model_path')!r}, not "
                                    f"{self.config.model_path!r}")
        info = self.run(self._get_json("/server_info", 30)).result(timeout=60)
        self.server_ranks = int(info.get("tp_size") or 1)

    # -- HTTP (on the background event loop) -----------------------------------------------------------------------
    def run(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _open_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.config.max_connections))

    async def _get(self, path: str, timeout: float) -> int:
        async with self.session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status

    async def _get_json(self, path: str, timeout: float) -> dict:
        async with self.session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return await resp.json(content_type=None)

    async def post(self, path: str, payload: dict, timeout: float | None, parse: bool = True) -> Any:
        async with self.session.post(self.url + path, json=payload,
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

    async def post_all(self, path: str, payloads: list[dict], timeout: float) -> list:
        return await asyncio.gather(*(self.post(path, p, timeout, parse=False) for p in payloads))

    def control(self, path: str, payload: dict, check: bool = True) -> dict:
        """POSTs a control call and waits for its reply; raises `SGLangServerError` if it fails (and, with `check`,
        if the server answers `success: false`)."""
        try:
            body = self.run(self.post(path, payload, self.config.control_timeout_s)).result(
                timeout=self.config.control_timeout_s + 5)
        except Exception as e:
            self.check()
            dead = f"; {self.dead}. Log tail:\n{self.log_tail(2000)}" if self.dead else ""
            raise SGLangServerError(f"{path} failed: {type(e).__name__}: {e}{dead}") from e
        if check and isinstance(body, dict) and body.get("success") is False:
            raise SGLangServerError(f"{path} failed: {body.get('message')}")
        return body
