"""Moving a ringjax policy into an SGLang server: HF-named tensors packed into byte buckets, and the trainer's end
of SGLang's weight-update process group.

SGLang's `update_weights_from_distributed` (RLHF weight sync, as in slime / verl / OpenRLHF): the server joins a
torch.distributed group of `world_size = 1 + its TP size` as ranks 1.. (`/init_weights_update_group`), the trainer
joins as rank 0; then for each bucket the trainer POSTs names / dtypes / shapes and broadcasts the data from rank
0. With `load_format="flattened_bucket"` (used here) a bucket is ONE uint8 tensor holding the tensors back to back,
so a bucket costs one collective. SGLang views each tensor at its byte offset and requires the offset to be a
multiple of the dtype size, so a bucket lists its tensors by decreasing item size.

The trainer's group is made like SGLang's own `init_custom_process_group` (a copy of torch's group construction,
as OpenRLHF does): a second world next to any default one, rendezvous over TCP with rank 0 (the trainer) hosting
the store. It is re-implemented here so the trainer process does not import SGLang.
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np
from flax import nnx

from ringjax.hf.save import hf_tensors
from ringjax.model import LingConfig
from ringjax.model.model import Ling
from rollout.weights import flat_weights, model_from_flat

NUMPY_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                "bfloat16": np.dtype(ml_dtypes.bfloat16)}
FLOATS = ("float64", "float32", "float16", "bfloat16")


def as_model(weights: Ling | nnx.State | Mapping[str, Any], config: LingConfig) -> Ling:
    """A `Ling` from a model (as is), its `nnx.State`, or flat weights {"moe_layers/wq": array}. MTP weights are
    left out when the served `config` has no MTP layer (a default export drops them; they are frozen anyway)."""
    if isinstance(weights, Ling):
        return weights
    flat = flat_weights(weights) if isinstance(weights, nnx.State) else weights
    if not config.num_nextn_predict_layers:
        flat = {k: v for k, v in flat.items() if not k.startswith("mtp/")}
    return model_from_flat(config, flat)


@dataclasses.dataclass(frozen=True)
class Bucket:
    names: list[str]
    dtypes: list[str]  # torch dtype names ("float32", "bfloat16")
    shapes: list[list[int]]
    data: np.ndarray  # uint8, the tensors' bytes back to back in the order of `names`

    def payload(self) -> dict[str, Any]:
        return {"names": self.names, "dtypes": self.dtypes, "shapes": self.shapes, "load_format": "flattened_bucket"}


def _bucket(items: list[tuple[str, np.ndarray]]) -> Bucket:
    items = sorted(items, key=lambda kv: -kv[1].dtype.itemsize)  # keeps every byte offset aligned to its dtype
    data = np.concatenate([np.ascontiguousarray(v).reshape(-1).view(np.uint8) for _, v in items])
    return Bucket([n for n, _ in items], [v.dtype.name for _, v in items], [list(v.shape) for _, v in items], data)


def hf_buckets(model: Ling, bucket_bytes: int, dtype: str | None = None) -> Iterator[Bucket]:
    """The model's HF tensors (`hf_tensors`) in buckets of at most `bucket_bytes` (a larger tensor gets its own).

    `dtype` casts floating tensors other than the router's `expert_bias` (kept float32, as in `save_pretrained`).
    """
    if dtype is not None and dtype not in NUMPY_DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(NUMPY_DTYPES)}")
    items: list[tuple[str, np.ndarray]] = []
    size = 0
    for name, value in hf_tensors(model):
        if value.dtype.name not in FLOATS + ("int32", "int64"):
            raise ValueError(f"tensor {name} has dtype {value.dtype}, which SGLang's loader does not take")
        if dtype is not None and value.dtype.name in FLOATS and not name.endswith("expert_bias"):
            value = value.astype(NUMPY_DTYPES[dtype])
        if items and size + value.nbytes > bucket_bytes:
            yield _bucket(items)
            items, size = [], 0
        items.append((name, value))
        size += value.nbytes
    if items:
        yield _bucket(items)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_backend(backend: str) -> None:
    """Raises before any rendezvous when this process cannot join a `backend` group (a half-made group would leave
    the server waiting in its rendezvous)."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_backend_available(backend):
        raise RuntimeError(f"torch.distributed backend {backend!r} is not available in this process")
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("weight sync backend 'nccl' needs a GPU in the trainer process; use 'gloo' on CPU")


def init_trainer_group(backend: str, master_addr: str, master_port: int, world_size: int, group_name: str,
                       timeout_s: float) -> Any:
    """Joins the weight-update group as rank 0 and hosts its TCP store; blocks until the server's ranks join."""
    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world, rendezvous

    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(rendezvous(f"tcp://{master_addr}:{master_port}", 0, world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    group, _ = _new_process_group_helper(world_size, rank, [], Backend(backend), store, group_name=group_name,
                                         backend_options=None, timeout=timeout)
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def broadcast_bucket(group: Any, bucket: Bucket, backend: str) -> None:
    import torch
    import torch.distributed as dist

    tensor = torch.from_numpy(bucket.data)
    if backend == "nccl":
        tensor = tensor.cuda()
    dist.broadcast(tensor, src=0, group=group)


def destroy_group(group: Any) -> None:
    import torch.distributed as dist

    try:
        dist.destroy_process_group(group)
    except Exception:  # the peer is gone or the group never finished; nothing left to release
        pass
