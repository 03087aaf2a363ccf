"""`make_engine`: the rollout engine an RL config asks for, built from a model's current weights.

`rl.rollout` chooses it: the embedded JAX engine in this process, on the trainer's mesh (it holds the model's
live arrays: no copy), `rollout.workers` Ray actors each with their own JAX engine (the weights shipped once as
host arrays), or SGLang servers (the model exported to an HF folder they start from), alone or in Ray workers.
The RL loop trains with it (`ringjax.trainer.rl.train_rl`); the pipeline evaluates and measures pass rates with
it (`ringjax.pipeline.stages`). The caller closes the engine.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from ringjax.model import Ling
from rollout.jax_engine import JaxEngine
from rollout.weights import flat_weights

if TYPE_CHECKING:
    from ringjax.trainer.rl import RLConfig


def _pool_options(r) -> dict:
    """RayEnginePool settings of a `rollout:` section: queue, cluster, hang deadlines, weight transfer."""
    return dict(queue_size=r.queue_size, address=r.ray_address, heartbeat_timeout=r.heartbeat_timeout_s,
                heartbeat_interval=min(5.0, r.heartbeat_timeout_s / 4), rpc_timeout=r.rpc_timeout_s,
                delta=r.weight_delta, weight_dtype=r.weight_dtype)


def make_engine(model: Ling, cfg: RLConfig, mesh=None, run_dir: str | None = None, *, slots: int | None = None,
                max_context: int | None = None, seed: int | None = None):
    """The rollout engine of `cfg` (an `RLConfig`) serving `model`'s weights: embedded JAX (in this process or in
    Ray workers) or SGLang servers. SGLang starts from an export to `run_dir/rollout_init_hf` (a new temporary
    folder when `run_dir` is None). `slots` (per engine, i.e. per worker), `max_context` and `seed` replace the
    run's (`rollout.slots` or the worker's share of omega, `max_prompt_len + max_new_tokens`, `rl.seed`), e.g. to
    evaluate with it."""
    r = cfg.rollout
    slots = slots or r.slots or -(-cfg.omega // max(1, r.workers))  # each worker holds its share of the pool
    max_context = max_context or cfg.max_prompt_len + cfg.max_new_tokens
    seed = cfg.seed if seed is None else seed
    if r.engine == "sglang":
        from ringjax.hf import save_pretrained
        from rollout.sglang.engine import SGLangConfig, SGLangEngine
        path = os.path.join(run_dir or tempfile.mkdtemp(prefix="ringjax_rollout_"), "rollout_init_hf")
        save_pretrained(model, path, overwrite=True)  # the servers start from the starting weights
        sg = SGLangConfig(model_path=path, **r.sglang)
        if not r.workers:
            return SGLangEngine(sg, model_config=model.config)
        from rollout.ray_pool import RayEnginePool
        from rollout.ray_worker import SGLangEngineFactory
        return RayEnginePool(SGLangEngineFactory(sg, model.config), r.workers, **_pool_options(r))
    if r.workers:
        from rollout.ray_pool import RayEnginePool
        from rollout.ray_worker import JaxEngineFactory
        weights = {k: np.asarray(v) for k, v in flat_weights(model).items()}
        factory = JaxEngineFactory(model.config, weights, slots=slots, max_context=max_context,
                                   decode_chunk=r.decode_chunk, seed=seed, numerics=r.numerics)
        return RayEnginePool(factory, r.workers, **_pool_options(r))
    return JaxEngine(model, slots=slots, max_context=max_context, decode_chunk=r.decode_chunk, seed=seed, mesh=mesh,
                     zero_mismatch=r.zero_mismatch, zero_mismatch_rows=cfg.rows, numerics=r.numerics)
