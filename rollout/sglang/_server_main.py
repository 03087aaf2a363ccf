"""Launcher of the SGLang HTTP server that `SGLangEngine` starts: `python _server_main.py [sglang server args]`.

It runs SGLang's own entry point (`sglang.launch_server`), with two opt-in CPU fixes (`rollout.sglang.cpu_fix`)
applied first: SGLANG_CPU_ROUTED_SCALING_FIX=1, SGLang 0.5.23's CPU MoE path never multiplies the routed experts'
sum by `routed_scaling_factor` (tests/sglang_support/_engine_main.py applies the same fix); and
SGLANG_CPU_ROUTED_EXPERTS_FIX=1, which `rollout.sglang.server` sets for a CPU server with routing records: its
routed-experts host cache is allocated without CUDA host registration, which kills a CPU server at start.

The script is run by path, not as a module of the `rollout` package: SGLang spawns its scheduler processes with
multiprocessing's spawn, which re-runs this file as `__mp_main__`, so the patch reaches them too, and they import
nothing of ringjax but the patch module (no JAX). Everything except the patches sits under the `__main__` guard.

With RINGJAX_SGLANG_PARENT_PID set (the engine sets it), a watcher thread kills the server's process group once
that process is gone, so a trainer killed without closing its engine leaves no server behind.
"""

import os
import signal
import sys
import threading
import time


if os.environ.get("SGLANG_CPU_ROUTED_SCALING_FIX", "0") == "1":
    from rollout.sglang.cpu_fix import patch_routed_scaling_on_cpu

    patch_routed_scaling_on_cpu()

if os.environ.get("SGLANG_CPU_ROUTED_EXPERTS_FIX", "0") == "1":
    from rollout.sglang.cpu_fix import patch_routed_experts_host_cache_on_cpu

    patch_routed_experts_host_cache_on_cpu()


def _exit_with_parent(parent: int) -> None:
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> None:
    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    if os.environ.get("RINGJAX_SGLANG_PARENT_PID"):
        _exit_with_parent(int(os.environ["RINGJAX_SGLANG_PARENT_PID"]))
    load_plugins()
    server_args = prepare_server_args(argv)
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


if __name__ == "__main__":
    main(sys.argv[1:])
