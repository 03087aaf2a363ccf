"""`from_pretrained`: a Hugging Face Ling/Ring folder -> a (sharded) ringjax model.

The checkpoint is checked against the config before any weight is read: every expected tensor must
be present with its exact shape and no unexpected tensor may be left over. Each device's shard is
then built with `jax.make_array_from_callback`, reading only its own slice from the safetensors files,
so no device (or host) ever holds the full model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open

from ringjax.hf.config_map import from_hf_config
from ringjax.hf.layout import expected_tensors, placements, read
from ringjax.model.config import LingConfig
from ringjax.model.create import abstract_model
from ringjax.model.model import Ling
from ringjax.sharding import state_shardings

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointReader:
    """Name -> file lookup over a (sharded) safetensors checkpoint, with lazy per-file handles."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, INDEX)
        if os.path.exists(index):
            with open(index) as f:
                self.files = dict(json.load(f)["weight_map"])
        elif os.path.exists(os.path.join(path, SINGLE)):
            with safe_open(os.path.join(path, SINGLE), "np") as f:
                self.files = {k: SINGLE for k in f.keys()}
        else:
            raise FileNotFoundError(f"{path} has neither {INDEX} nor {SINGLE}")
        self._handles: dict[str, Any] = {}

    def _open(self, file: str):
        if file not in self._handles:
            full = os.path.join(self.path, file)
            if not os.path.exists(full):
                raise FileNotFoundError(f"{INDEX} names {file}, which is missing from {self.path}")
            self._handles[file] = safe_open(full, "np")
        return self._handles[file]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self.files[name]).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return self._open(self.files[name]).get_slice(name).get_dtype()

    def __call__(self, name: str, slices: tuple[slice, ...]) -> np.ndarray:
        return self._open(self.files[name]).get_slice(name)[slices]


def read_config(path: str, strict: bool = True, **compute) -> LingConfig:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path} has no config.json")
    with open(cfg_path) as f:
        return from_hf_config(json.load(f), strict=strict, **compute)


def check_checkpoint(cfg: LingConfig, reader: CheckpointReader, shapes: dict) -> None:
    expected = expected_tensors(cfg, shapes)
    missing = sorted(set(expected) - set(reader.files))
    extra = sorted(set(reader.files) - set(expected))
    if missing:
        raise ValueError(f"checkpoint {reader.path} is missing {len(missing)} tensor(s), e.g. {missing[:5]}")
    if extra:
        raise ValueError(f"checkpoint {reader.path} has {len(extra)} tensor(s) this config does not use, "
                         f"e.g. {extra[:5]}")
    for name, shape in expected.items():
        got = reader.shape(name)
        if got != shape:
            raise ValueError(f"tensor {name} has shape {got}, the config expects {shape}")


def checkpoint_dtype(reader: CheckpointReader) -> str:
    dtypes = {reader.dtype(n) for n in reader.files if not n.endswith("expert_bias")}
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    if len(dtypes) != 1 or next(iter(dtypes)) not in names:
        raise ValueError(f"checkpoint weights have dtypes {sorted(dtypes)}; pass param_dtype explicitly")
    return names[dtypes.pop()]


def from_pretrained(path: str, mesh: Mesh | None = None, *, param_dtype: str | None = None, strict: bool = True,
                    **compute) -> Ling:
    """Loads a Ling/Ring HF folder. `param_dtype` defaults to the checkpoint's dtype; `compute` sets
    ComputeConfig fields (dtype, remat, attention, moe, logprob_chunk).

    The model has exactly the MTP layers the folder holds: `num_nextn_predict_layers: N` with the tensors of
    layers `model.layers.{num_hidden_layers}..+N-1` (a `save_pretrained(..., mtp="keep")` export) loads them
    into `model.mtp`; `num_nextn_predict_layers: 0` (the default export, released Ling 2.0 checkpoints) gives
    a model without MTP. A model exported with the default `mtp="drop"` therefore comes back without MTP:
    nothing stands in for weights the folder does not have."""
    reader = CheckpointReader(path)
    compute = dict(compute, param_dtype=param_dtype or checkpoint_dtype(reader))
    cfg = read_config(path, strict=strict, **compute)
    graphdef, abstract = nnx.split(abstract_model(cfg))
    flat = dict(nnx.to_flat_state(abstract))
    check_checkpoint(cfg, reader, {path_: v.shape for path_, v in flat.items()})
    shardings = (dict(nnx.to_flat_state(state_shardings(abstract, mesh))) if mesh is not None else
                 {p: SingleDeviceSharding(jax.devices()[0]) for p in flat})
    places = placements(cfg)
    loaded = {}
    for path_, var in flat.items():
        place = places[path_]
        shape, dtype = var.shape, var.dtype

        def callback(index, place=place, shape=shape, dtype=dtype):
            index = tuple(index) + (slice(None),) * (len(shape) - len(index))
            if place.layers is None:
                block = read(cfg, place.rule, "", shape, index, reader)
            else:
                layers = place.layers[index[0]]
                block = np.stack([read(cfg, place.rule, f"model.layers.{i}.", shape[1:], index[1:], reader)
                                  for i in layers])
            return np.asarray(block).astype(jnp.dtype(dtype))

        array = jax.make_array_from_callback(shape, shardings[path_], callback)
        loaded[path_] = var.replace(array)
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))
