"""Rollout settings of an RL run (the `rollout:` section of a run config)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from rollout.numerics import EngineNumerics


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    mode: Literal["c3po++", "sync"] = "sync"  # sync: wait for whole batches (Ring-lite); c3po++: Ring-1T
    engine: Literal["jax", "sglang"] = "jax"  # jax: the embedded engine; sglang: one SGLang server per engine
    sglang: dict[str, Any] = dataclasses.field(default_factory=dict)  # SGLangConfig fields (dtype, device, ...)
    omega: int = 0  # inference pool capacity in responses; 0: prompts_per_batch * samples_per_prompt
    sigma: int = 2  # c3po++: iterations a rollout may span before it is dropped (counted)
    carry_kv: Literal["recompute", "keep"] = "recompute"  # c3po++: a carried response is re-prefilled by the new
    # weights, or keeps its KV cache from the old ones and continues (embedded engine in this process only)
    slots: int = 0  # embedded engine: KV-cache rows decoded together (per worker); 0: omega / max(workers, 1)
    decode_chunk: int = 8  # embedded engine: decode steps per jitted call (slots are refilled between calls)
    workers: int = 0  # Ray rollout workers (each with its own engine); 0: the engine runs in the trainer process
    ray_address: str | None = None  # join this Ray cluster; None: start a local one
    queue_size: int = 256  # Ray trajectory queue capacity (back-pressure on the workers)
    heartbeat_timeout_s: float = 60.0  # Ray workers: seconds a heartbeat may go unanswered before the worker is
    # declared hung, killed and replaced (its requests reissued)
    rpc_timeout_s: float = 600.0  # Ray workers: seconds a call (configure, abort, update_weights) may take
    weight_dtype: str | None = None  # Ray workers: floating weights cast to this ("bfloat16") before they are sent
    weight_delta: bool = False  # Ray workers: send only the elements that changed since the last update, with
    # checksums; a worker that cannot apply the delta gets the full weights (rollout.weight_delta)
    reward_workers: int = 4  # threads scoring complete groups while generation goes on
    reward_timeout_s: float = 60.0  # seconds one reward call may run (from its start) before it scores 0, counted
    zero_mismatch: bool = False  # embedded engine: log-probs bit-equal to the trainer's (rollout.zero_mismatch); slower
    numerics: EngineNumerics = EngineNumerics()  # embedded engine: controlled mismatch (dtype, fp8, MoE kernel, noise)

    @property
    def records_routing(self) -> bool:
        """Whether the engine returns routing records (router replay needs them): the embedded engine always,
        SGLang when started with `rollout.sglang.return_routed_experts: true`."""
        return self.engine == "jax" or bool(self.sglang.get("return_routed_experts", False))

    def __post_init__(self):
        if self.mode not in ("c3po++", "sync"):
            raise ValueError(f"rollout.mode={self.mode!r} is not 'c3po++' or 'sync'")
        if self.engine not in ("jax", "sglang"):
            raise ValueError(f"rollout.engine={self.engine!r} is not 'jax' or 'sglang'")
        if self.sglang and self.engine != "sglang":
            raise ValueError("rollout.sglang settings are given but rollout.engine is not 'sglang'")
        if self.engine == "sglang" and not self.numerics.is_default:
            raise ValueError(f"rollout.numerics ({self.numerics.describe()}) applies to the embedded engine only; "
                             f"rollout.engine is 'sglang' (set its precision with rollout.sglang.dtype)")
        if "model_path" in self.sglang:
            raise ValueError("rollout.sglang.model_path is set by the trainer (it exports the starting model)")
        for name in ("omega", "slots", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"rollout.{name}={getattr(self, name)} must be >= 0")
        for name in ("sigma", "decode_chunk", "queue_size", "reward_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name}={getattr(self, name)} must be >= 1")
        if self.carry_kv not in ("recompute", "keep"):
            raise ValueError(f"rollout.carry_kv={self.carry_kv!r} is not 'recompute' or 'keep'")
        if self.carry_kv == "keep":
            for bad, why in ((self.mode != "c3po++", f"rollout.mode={self.mode!r} (needs 'c3po++')"),
                             (self.engine != "jax", f"rollout.engine={self.engine!r} (needs 'jax')"),
                             (self.workers != 0, f"rollout.workers={self.workers} (needs 0: this process's engine)"),
                             (self.zero_mismatch, "rollout.zero_mismatch=true (its decode reads no KV cache)")):
                if bad:
                    raise ValueError(f"rollout.carry_kv=keep cannot hold with {why}")
        if self.weight_dtype is not None and self.weight_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"rollout.weight_dtype={self.weight_dtype!r} is not 'bfloat16', 'float16' or 'float32'")
        if (self.weight_delta or self.weight_dtype is not None) and not self.workers:
            raise ValueError("rollout.weight_delta / rollout.weight_dtype apply to Ray workers; rollout.workers is 0 "
                             "(the engine in this process shares the trainer's weights)")
        for name in ("reward_timeout_s", "heartbeat_timeout_s", "rpc_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"rollout.{name}={getattr(self, name)} must be > 0")
