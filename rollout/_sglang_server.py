"""Launcher of the SGLang HTTP server that `SGLangEngine` starts: `python _sglang_server.py [sglang server args]`.

It runs SGLang's own entry point (`sglang.launch_server`), with one opt-in CPU fix applied first
(SGLANG_CPU_ROUTED_SCALING_FIX=1): SGLang 0.5.23's CPU MoE path (`moe_forward_native`) never multiplies the routed
experts' sum by `routed_scaling_factor`, which its CUDA/Triton runner and the Ling 2.0 reference do. The same fix
is in tests/sglang_support/_engine_main.py (the parity test shows it is needed, and that it is the only gap).

The script is run by path, not as a module of the `rollout` package: SGLang spawns its scheduler processes with
multiprocessing's spawn, which re-runs this file as `__mp_main__`, so the patch reaches them too, and they never
import `rollout` (or JAX). Everything except the patch sits under the `__main__` guard.

With RINGJAX_SGLANG_PARENT_PID set (the engine sets it), a watcher thread kills the server's process group once
that process is gone, so a trainer killed without closing its engine leaves no server behind.
"""

import os
import signal
import sys
import threading
import time


def _patch_routed_scaling_on_cpu() -> None:
    from sglang.srt.layers.moe import fused_moe_native

    original = fused_moe_native.moe_forward_native
    if getattr(original, "_ringjax_patched", False):
        return

    def moe_forward_native(layer, x, topk_output, moe_runner_config):
        out = original(layer, x, topk_output, moe_runner_config)
        scale = moe_runner_config.routed_scaling_factor
        if scale is not None and scale != 1.0 and not getattr(layer, "should_fuse_routed_scaling_factor_in_topk",
                                                              False):
            out = out * scale
        return out

    moe_forward_native._ringjax_patched = True
    fused_moe_native.moe_forward_native = moe_forward_native


if os.environ.get("SGLANG_CPU_ROUTED_SCALING_FIX", "0") == "1":
    _patch_routed_scaling_on_cpu()


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
