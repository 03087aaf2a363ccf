"""`save_pretrained`: a ringjax model -> a Hugging Face folder that SGLang, vLLM and transformers load.

Writes sharded safetensors + `model.safetensors.index.json` + `config.json` (+ the configuration
modules named by `auto_map`, + optional extra files such as a tokenizer). Everything is written to a
temporary sibling folder and renamed into place at the end, so a failed export leaves nothing behind
and never touches an existing folder. Tensors are fetched one layer (one expert) at a time, so host
memory stays at one output shard; in a multi-process run every process takes part in the gathers
and process 0 writes.

By default the MTP layers (Ling 2.0 `num_nextn_predict_layers`) are left out and config.json says
`num_nextn_predict_layers: 0`, like the released Ling 2.0 checkpoints: that folder is what both SGLang and
vLLM serve as it is (vLLM's Bailing loader refuses MTP tensors). `mtp="keep"` writes them under the names
of layout.py, for MTP speculative decoding.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from ringjax.hf.config_map import CONFIG_MODULE, to_hf_config
from ringjax.hf.layout import export_config, placements, write
from ringjax.hf.load import INDEX
from ringjax.model.model import Ling

REMOTE_CODE = os.path.join(os.path.dirname(__file__), "remote_code")
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _fetch(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def hf_tensors(model: Ling, mtp: str = "drop") -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, C-contiguous array) for every tensor of `save_pretrained(model, mtp=mtp)`, in checkpoint order;
    fused q/k/v joined."""
    for name, value in _hf_views(model, mtp):
        yield name, np.ascontiguousarray(value)


def _hf_views(model: Ling, mtp: str) -> Iterator[tuple[str, np.ndarray]]:
    cfg = export_config(model.config, mtp)
    flat = {path: v for path, v in nnx.to_flat_state(nnx.state(model))
            if path[0] != "mtp" or cfg.num_nextn_predict_layers}
    places = placements(cfg)
    if set(places) != set(flat):
        raise ValueError(f"model state and layout disagree: {sorted(set(places) ^ set(flat))[:5]}")
    for path, place in places.items():
        value = flat[path][...]
        if place.layers is None:
            yield from write(cfg, place.rule, "", _fetch(value))
        elif place.rule.kind in ("qkv", "qkv_bias"):
            if place.rule.part != "q":
                continue  # k and v are joined to q's rows
            parts = [path[:-1] + (path[-1][0] + p + path[-1][2:],) for p in ("q", "k", "v")]
            for j, layer in enumerate(place.layers):
                prefix = f"model.layers.{layer}."
                blocks = [next(write(cfg, places[p].rule, prefix, _fetch(flat[p][...][j])))[1] for p in parts]
                yield prefix + place.rule.name, np.concatenate(blocks, axis=0)
        elif place.rule.kind == "expert":
            for j, layer in enumerate(place.layers):
                for e in range(value.shape[1]):
                    yield f"model.layers.{layer}." + place.rule.name.format(e=e), _fetch(value[j, e]).T
        else:
            for j, layer in enumerate(place.layers):
                yield from write(cfg, place.rule, f"model.layers.{layer}.", _fetch(value[j]))


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    for unit, mult in units.items():
        if size.upper().endswith(unit):
            return int(float(size[:-2]) * mult)
    return int(size)


def save_pretrained(model: Ling, path: str, *, max_shard_size: int | str = "2GB", dtype: str | None = None,
                    mtp: str = "drop", extra_files: dict[str, str] | None = None, overwrite: bool = False) -> str:
    """Exports `model` to `path`. `dtype` casts floating weights (default: as stored; the router
    expert_bias always stays float32). `mtp`: "drop" (default) leaves the MTP layers out and writes
    `num_nextn_predict_layers: 0`; "keep" writes them (see the module docstring). `extra_files` maps names
    in the folder to files to copy in."""
    cfg = export_config(model.config, mtp)
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(_DTYPES)}")
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (ringjax export --overwrite) to replace it")
    writer = jax.process_index() == 0
    limit = _parse_size(max_shard_size)
    if writer:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path)) if writer else None
    try:
        shard: dict[str, np.ndarray] = {}
        files: list[list[str]] = []  # tensor names per written shard

        def flush():
            if writer and shard:
                save_file(shard, os.path.join(tmp, f"part-{len(files)}.safetensors"), metadata={"format": "pt"})
            files.append(list(shard))
            shard.clear()

        size = total = 0
        for name, value in hf_tensors(model, mtp):
            if dtype is not None and not name.endswith("expert_bias"):
                value = value.astype(_DTYPES[dtype])
            if shard and size + value.nbytes > limit:
                flush()
                size = 0
            shard[name] = value
            size += value.nbytes
            total += value.nbytes
        flush()
        if not writer:
            return path
        weight_map = {}
        for i, names in enumerate(files):
            fname = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
            os.replace(os.path.join(tmp, f"part-{i}.safetensors"), os.path.join(tmp, fname))
            weight_map.update(dict.fromkeys(names, fname))
        with open(os.path.join(tmp, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        torch_dtype = dtype or cfg.compute.param_dtype
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(to_hf_config(cfg, torch_dtype=torch_dtype), f, indent=2)
        module = CONFIG_MODULE[cfg.architecture] + ".py"
        shutil.copy(os.path.join(REMOTE_CODE, module), os.path.join(tmp, module))
        for name, src in (extra_files or {}).items():
            shutil.copy(src, os.path.join(tmp, name))
        old = None
        if os.path.exists(path):  # keep the old export until the new one is in place
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
            os.replace(path, os.path.join(old, "export"))
        os.replace(tmp, path)
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return path
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
