"""`ringjax plan CONFIG`: the memory plan (`ringjax.plan.plan_memory`) of each training phase of a pipeline config."""

from __future__ import annotations

import math

from ringjax.model import LingConfig
from ringjax.pipeline.config import PipelineConfig
from ringjax.plan import MemoryPlan, plan_memory
from ringjax.sharding import resolve_mesh_sizes


def model_config(cfg: PipelineConfig) -> LingConfig:
    """The architecture the run trains: the preset (with overrides), else the weights' config.json / meta."""
    m = cfg.model
    compute = m.overrides.get("compute", {})
    if m.preset:
        from ringjax.model import preset
        return preset(m.preset, **m.overrides)
    if m.hf_path:
        from ringjax.hf import read_config
        return read_config(m.hf_path, **compute)
    from ringjax.trainer.model_checkpoint import latest_step_dir, read_model_config
    return read_model_config(latest_step_dir(m.checkpoint), **compute)


def _local_memory_gb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["bytes_limit"] / 2**30 if "bytes_limit" in stats else None


def plan_pipeline(cfg: PipelineConfig, devices: int | None = None,
                  device_memory_gb: float | None = None) -> dict[str, MemoryPlan]:
    """{phase: plan} for SFT (when enabled) and every RL stage, with their micro-batch shapes."""
    axes = cfg.mesh.axes()
    if devices is None:
        if -1 in axes.values():
            import jax
            devices = jax.device_count()
        else:
            devices = math.prod(axes.values())
    mesh = resolve_mesh_sizes(axes, devices)
    memory = device_memory_gb or cfg.mesh.device_memory_gb
    if memory is None:
        memory = _local_memory_gb()
    model = model_config(cfg)
    phases = {}
    if cfg.sft.enabled:
        phases["sft"] = (cfg.sft.train.rows, cfg.sft.train.seq_len, 0, 0)
    for stage in cfg.stages:
        rl = cfg.stage_rl(stage)
        shared = rl.rollout.engine == "jax" and rl.rollout.workers == 0  # the engine's KV cache on these devices
        slots = (rl.rollout.slots or rl.omega) if shared else 0
        phases[f"rl {stage.name}"] = (rl.rows, rl.seq_len, slots, rl.max_prompt_len + rl.max_new_tokens)
    return {name: plan_memory(model, mesh, rows=rows, seq_len=seq_len, device_memory_gb=memory,
                              optimizer_dtype=model.compute.param_dtype, kv_slots=slots, kv_context=context)
            for name, (rows, seq_len, slots, context) in phases.items()}
