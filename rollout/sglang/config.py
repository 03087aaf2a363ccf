"""`SGLangConfig`: how `rollout.sglang.engine.SGLangEngine` starts its SGLang server, talks to it and syncs weights.

One frozen config read by the server process (`rollout.sglang.server`), the generation client
(`rollout.sglang.engine`) and the weight sync (`rollout.sglang.sync`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class SGLangConfig:
    model_path: str  # HF folder (config.json + safetensors); SGLang needs no tokenizer files here
    host: str = "127.0.0.1"  # address the server binds to and the client calls
    port: int | None = None  # None: a free port
    device: str | None = None  # "cpu" on CPU machines (with SGLANG_USE_CPU_ENGINE=1); None: SGLang's default
    dtype: str = "auto"  # "auto" runs a float32 checkpoint in float16: ask for "float32" to compare log-probs
    max_total_tokens: int | None = None  # KV cache size in tokens
    mem_fraction_static: float | None = None  # SGLang's share of device memory for weights + KV cache; None: its own
    context_length: int | None = None  # None: the checkpoint's max_position_embeddings
    server_args: tuple[str, ...] = ()  # extra `sglang.launch_server` flags, e.g. ("--tp-size", "8")
    log_level: str = "warning"  # the server's --log-level ("info" also logs its throughput)
    sleep_on_idle: bool = True  # an idle scheduler blocks on its sockets instead of spinning a CPU core at 100%
    fix_cpu_routed_scaling: bool | None = None  # apply the CPU MoE fix (see _server_main.py); None: env decides
    launcher: tuple[str, ...] = ()  # command before the server flags; () = python rollout/sglang/_server_main.py
    return_routed_experts: bool = False  # routing records in every output (rollout.sglang.generate; CPU: cpu_fix)
    weight_sync: Literal["distributed", "disk"] = "distributed"  # broadcast over a process group, or via a folder
    sync_backend: str | None = None  # torch.distributed backend; None: "gloo" on CPU, "nccl" otherwise
    sync_master_addr: str = "127.0.0.1"  # where the server reaches this (the trainer's) process
    sync_dtype: str | None = None  # cast weights before sending ("bfloat16"); None: as given
    bucket_bytes: int = 64 << 20  # weight sync: tensors packed into broadcasts of at most this size (or one tensor)
    start_timeout_s: float = 300.0  # how long the server may take to answer its health check after launch
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
