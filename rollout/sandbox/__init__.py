"""The bubblewrap sandbox that runs model-written programs (`box`), and the seccomp filter it loads (`seccomp`)."""

from rollout.sandbox.box import (BOX, PROGRAM, RUNNER_DIR, CancelScope, Cancelled, Runner, SandboxLimits,
                                 SandboxResult, SandboxUnavailable, bwrap_binary, bwrap_version, interpreter,
                                 run_python, sandbox_available)

__all__ = ["BOX", "PROGRAM", "RUNNER_DIR", "CancelScope", "Cancelled", "Runner", "SandboxLimits", "SandboxResult",
           "SandboxUnavailable", "bwrap_binary", "bwrap_version", "interpreter", "run_python", "sandbox_available"]
