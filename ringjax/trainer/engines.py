"""`make_engine`: the rollout engine an RL config asks for, built from a model's current weights.

`rl.rollout` chooses it: the embedded JAX engine in this process, on the trainer's mesh (it holds the model's
live arrays: no copy), `rollout.workers` Ray actors each with their own JAX engine (the weights shipped once as
host arrays), or SGLang servers (the model exported to an HF folder they start from), alone or in Ray workers.
The RL loop trains with it (`ringjax.trainer.rl.train_rl`); the pipeline evaluates and measures pass rates with
it (`ringjax.pipeline.stages`). The caller closes the engine.

A trainer of several processes generating with Ray workers (`ringjax.trainer.driver`): process 0 builds the pool
(`driver`), whose workers start without the model and take every update as shards sent by every process
(`weights`: the model's current flat weights); SGLang servers start from an export that every process takes part
in (`export_for_servers`, before process 0 builds the engine).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ringjax import storage
from ringjax.model import Ling
from rollout.jax_engine import JaxEngine
from rollout.weights import flat_weights

if TYPE_CHECKING:
    from ringjax.trainer.driver import Driver
    from ringjax.trainer.rl import RLConfig


def _pool_options(r) -> dict:
    """RayEnginePool settings of a `rollout:` section: queue, cluster, hang deadlines, weight transfer."""
    return dict(queue_size=r.queue_size, address=r.ray_address, heartbeat_timeout=r.heartbeat_timeout_s,
                heartbeat_interval=min(5.0, r.heartbeat_timeout_s / 4), rpc_timeout=r.rpc_timeout_s,
                delta=r.weight_delta, weight_dtype=r.weight_dtype)


def check_rollout_processes(key: str, r, processes: int) -> None:
    """ValueError naming `key` if rollout section `r` cannot serve a trainer of `processes` processes."""
    if processes > 1 and r.engine == "sglang" and not r.workers:
        raise ValueError(f"{key}: engine='sglang', workers=0 with a trainer of {processes} processes: SGLang servers "
                         f"take weights from one process; run them in Ray workers (rollout.workers >= 1), which "
                         f"every trainer process sends its shards to")
    if processes > 1 and r.weight_delta:
        raise ValueError(f"{key}: weight_delta=true with a trainer of {processes} processes: a delta needs the "
                         f"whole previous weights on one host; the processes send their shards whole instead")


def export_for_servers(model: Ling, cfg: RLConfig, run_dir: str | None) -> str | None:
    """SGLang engines (`rollout.engine: sglang`): exports `model` to `run_dir/rollout_init_hf` (a new temporary
    folder when `run_dir` is None or in an object store), which the servers start from, and returns the folder;
    else None. Every process of a multi-process trainer calls it (each writes its part)."""
    if cfg.rollout.engine != "sglang":
        return None
    from ringjax.hf import save_pretrained

    local = run_dir is not None and not storage.is_url(run_dir)  # the servers read a local folder
    path = os.path.join(run_dir if local else tempfile.mkdtemp(prefix="ringjax_rollout_"), "rollout_init_hf")
    save_pretrained(model, path, overwrite=True)
    return path


def make_engine(model: Ling, cfg: RLConfig, mesh=None, run_dir: str | None = None, *, slots: int | None = None,
                max_context: int | None = None, seed: int | None = None, driver: Driver | None = None,
                weights: Callable[[], Mapping[str, Any]] | None = None, export: str | None = None):
    """The rollout engine of `cfg` (an `RLConfig`) serving `model`'s weights: embedded JAX (in this process or in
    Ray workers) or SGLang servers. SGLang starts from an export to `run_dir/rollout_init_hf` (a new temporary
    folder when `run_dir` is None). `slots` (per engine, i.e. per worker), `max_context` and `seed` replace the
    run's (`rollout.slots` or the worker's share of omega, `max_prompt_len + max_new_tokens`, `rl.seed`), e.g. to
    evaluate with it. With `driver` (process 0 of a multi-process trainer), the Ray workers take the shards of
    `weights()` from every process, and SGLang servers start from `export` (`export_for_servers`, done already)."""
    r = cfg.rollout
    slots = slots or r.slots or -(-cfg.omega // max(1, r.workers))  # each worker holds its share of the pool
    max_context = max_context or cfg.max_prompt_len + cfg.max_new_tokens
    seed = cfg.seed if seed is None else seed
    options = _pool_options(r)
    if driver is not None:  # the workers are named, so that every trainer process finds them
        options.update(name=f"ringjax-{uuid.uuid4().hex[:8]}",
                       send_shards=lambda workers, version: driver.send_shards(weights(), workers, version))
    if r.engine == "sglang":
        from rollout.sglang.engine import SGLangConfig, SGLangEngine
        sg = SGLangConfig(model_path=export or export_for_servers(model, cfg, run_dir), **r.sglang)
        if not r.workers:
            return SGLangEngine(sg, model_config=model.config)
        from rollout.ray_pool import RayEnginePool
        from rollout.ray_worker import SGLangEngineFactory
        return RayEnginePool(SGLangEngineFactory(sg, model.config), r.workers, **options)
    if r.workers:
        from rollout.ray_pool import RayEnginePool
        from rollout.ray_worker import JaxEngineFactory
        host = None if driver else {k: np.asarray(v) for k, v in flat_weights(model).items()}
        factory = JaxEngineFactory(model.config, host, slots=slots, max_context=max_context,
                                   decode_chunk=r.decode_chunk, seed=seed, numerics=r.numerics)
        return RayEnginePool(factory, r.workers, **options)
    return JaxEngine(model, slots=slots, max_context=max_context, decode_chunk=r.decode_chunk, seed=seed, mesh=mesh,
                     zero_mismatch=r.zero_mismatch, zero_mismatch_rows=cfg.rows, numerics=r.numerics)
