"""A model out of any ringjax Orbax checkpoint, and a model into one (`ringjax import` / `ringjax export`).

A train checkpoint step folder (`<run>/checkpoints/<step>/`) holds `state` (flat `params/...`, `frozen/...`,
`opt_state/...`, ...) and `meta` (the model architecture, `checkpoint_meta`). `restore_model` rebuilds the
`LingConfig` from `meta` and reads only the `params/` and `frozen/` leaves (an Orbax partial restore: optimiser
moments are never read), each device reading its own shards. `save_model` writes a step-0 checkpoint holding only
those leaves, which `restore_model` and the trainers' `model.checkpoint` start from.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from ringjax import storage
from ringjax.model import Ling, LingConfig, abstract_model
from ringjax.sharding import state_shardings
from ringjax.trainer.checkpoint import META, STATE, Checkpointer, checkpoint_steps
from ringjax.trainer.state import (checkpoint_meta, flatten_state, merge_model, split_model, unflatten_state,
                                   with_shardings)

_MODEL_PARTS = ("params", "frozen")


def is_step_dir(path: str) -> bool:
    return storage.is_file(storage.join(path, META, "metadata")) and storage.is_dir(storage.join(path, STATE))


def latest_step_dir(path: str) -> str:
    """`path` itself if it is a checkpoint step folder, else its (or its `checkpoints/`) newest step folder."""
    if is_step_dir(path):
        return path
    for folder in (path, storage.join(path, "checkpoints")):
        for step in reversed(checkpoint_steps(folder)):
            if is_step_dir(storage.join(folder, str(step))):
                return storage.join(folder, str(step))
    raise FileNotFoundError(f"{path} is not an Orbax checkpoint step folder and holds no checkpoints/<step>/")


def read_model_config(step_dir: str, **compute) -> LingConfig:
    """The architecture a checkpoint's `meta` records, with `compute` settings (dtypes, remat) applied."""
    meta = storage.read_json(storage.join(step_dir, META, "metadata"))
    fields = {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith("model.")}
    if not fields:
        raise ValueError(f"{step_dir}: checkpoint meta names no model (keys {sorted(meta)[:5]})")
    fields["hf_extra"] = tuple(tuple(x) for x in fields.get("hf_extra", ()))
    cfg = LingConfig.from_dict(fields)
    return cfg.replace(compute=compute) if compute else cfg


def restore_model(path: str, mesh: Mesh | None = None, **compute) -> Ling:
    """The model of checkpoint `path` (a step folder, a checkpoints folder or a run folder: newest step)."""
    step_dir = latest_step_dir(storage.resolve(path, "checkpoint"))  # Orbax reads absolute paths only
    cfg = read_model_config(step_dir, **compute)
    graphdef, params, frozen = split_model(abstract_model(cfg))
    like = {"params": params, "frozen": frozen}
    if mesh is not None:
        like = {k: with_shardings(v, state_shardings(v, mesh)) for k, v in like.items()}
    flat = flatten_state(like)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restore_args = {k: ocp.ArrayRestoreArgs(sharding=getattr(v, "sharding", None) or device) for k, v in flat.items()}
    try:
        read = ocp.PyTreeCheckpointer().restore(storage.join(step_dir, STATE), args=ocp.args.PyTreeRestore(
            item=flat, restore_args=restore_args, partial_restore=True))
    except (ValueError, KeyError) as e:
        raise ValueError(f"{step_dir}: cannot read the model weights of {cfg.architecture}: {e}") from e
    restored = unflatten_state(like, read)
    return merge_model(graphdef, restored["params"], restored["frozen"])


def save_model(model: Ling, directory: str) -> str:
    """Writes `model` as step 0 of an Orbax checkpoint folder `directory` (must not hold one); returns the step
    folder. Atomic: Orbax writes a temporary folder and renames it."""
    directory = os.path.abspath(directory)  # Orbax writes absolute paths only
    if os.path.isdir(directory) and os.listdir(directory):
        raise FileExistsError(f"{directory} exists and is not empty")
    _, params, frozen = split_model(model)
    ckpt = Checkpointer(directory, every=1, keep=1, async_save=False, meta=checkpoint_meta(model.config))
    try:
        ckpt.save(0, flatten_state({"params": params, "frozen": frozen}), extras={}, force=True)
        ckpt.wait()
    finally:
        ckpt.close()
    return os.path.join(directory, "0")
