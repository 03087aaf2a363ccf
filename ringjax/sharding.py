"""Device mesh, logical axis names and the one table that maps them to mesh axes.

Every parameter carries logical axis names in its `axes` metadata; activations are constrained with
`constrain(x, axes)`. `RULES` maps each logical name to mesh axes (MaxText's `logical_axis_rules`, kept
to one small table). The mesh always has the four axes (data, fsdp, expert, tensor); unused ones have
size 1. Multi-host: call `initialize_distributed()` before building the mesh and `jax.devices()` spans
every process.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")

# logical name -> mesh axes (None: replicated). Parameters shard their `embed` dimension over fsdp
# (ZeRO-3 style), experts over `expert`, and heads / MLP width / vocabulary over `tensor`.
RULES: dict[str, tuple[str, ...] | None] = {
    # activations
    "batch": BATCH_AXES,
    "seq": None,
    "act_embed": None,
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_vocab": ("tensor",),
    "cache_seq": None,
    # parameters
    "layers": None,
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "mlp": ("tensor",),
    "expert": ("expert",),
    "expert_mlp": ("tensor",),
    "router_expert": None,
    "norm": None,
    "mtp_in": ("tensor",),
}


def make_mesh(data: int = 1, fsdp: int = -1, expert: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, expert, tensor) mesh; one size may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_sizes({"data": data, "fsdp": fsdp, "expert": expert, "tensor": tensor}, len(devices))
    grid = np.asarray(devices, dtype=object).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def resolve_mesh_sizes(sizes: dict[str, int], devices: int) -> dict[str, int]:
    """Axis sizes for `devices` devices, the (at most one) -1 axis taking the devices the others leave."""
    sizes = dict(sizes)
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {free}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if any(v == 0 or v < -1 for v in sizes.values()):
        raise ValueError(f"mesh sizes must be positive (or one -1): {sizes}")
    if free:
        if devices % fixed:
            raise ValueError(f"{devices} devices are not divisible by the fixed mesh axes {sizes}")
        sizes[free[0]] = devices // fixed
    if math.prod(sizes.values()) != devices:
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {devices}")
    return sizes


def use_mesh(mesh: Mesh | None):
    """`jax.set_mesh(mesh)`, or a no-op context when `mesh` is None (single device)."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


def batch_shards(mesh: Mesh) -> int:
    """How many ways activations split their batch (rows) on `mesh`: the product of the BATCH_AXES sizes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_rows(mesh: Mesh | None, rows: dict[str, int]) -> None:
    """ValueError naming the first `{config name: row count}` that the mesh's batch axes do not divide."""
    if mesh is None:
        return
    ways = batch_shards(mesh)
    for name, n in rows.items():
        if n % ways:
            raise ValueError(f"{name}={n} is not divisible by the mesh batch axes {BATCH_AXES} (size {ways})")


def logical_to_spec(axes: Sequence[str | None], mesh: Mesh | None = None) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec, dropping mesh axes of size 1 or used twice."""
    used: set[str] = set()
    spec = []
    for name in axes:
        if name is None:
            spec.append(None)
            continue
        if name not in RULES:
            raise KeyError(f"logical axis {name!r} has no entry in ringjax.sharding.RULES")
        mesh_axes = [a for a in (RULES[name] or ()) if a not in used and (mesh is None or mesh.shape[a] > 1)]
        used.update(mesh_axes)
        spec.append(tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
    return PartitionSpec(*spec)


def current_mesh() -> Mesh | jax.sharding.AbstractMesh | None:
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside `jax.set_mesh`."""
    mesh = current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, mesh))


def param_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    axes = variable.get_metadata().get("axes")
    if axes is None:
        raise ValueError(f"variable of shape {variable.shape} has no logical `axes` metadata")
    if len(axes) != variable.ndim:
        raise ValueError(f"axes {axes} do not match the variable's shape {variable.shape}")
    return tuple(axes)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedSharding for every variable of an (abstract) model state, checking divisibility."""

    def one(path, variable):
        axes = param_axes(variable)
        spec = logical_to_spec(axes, mesh)
        for dim, (size, part) in enumerate(zip(variable.shape, spec)):
            parts = (part,) if isinstance(part, str) else (part or ())
            n = math.prod(mesh.shape[a] for a in parts)
            if size % n:
                name = "/".join(map(str, path))
                raise ValueError(f"parameter {name} dim {dim} (size {size}, logical axis {axes[dim]!r}) is not "
                                 f"divisible by mesh axes {parts} of size {n}")
        return NamedSharding(mesh, spec)

    return nnx.map_state(one, state)


def unsharded_large_params(state: nnx.State, min_size: int = 2**14) -> list[tuple[str, tuple[int, ...]]]:
    """Parameters with at least `min_size` elements that every device holds in full."""
    found = []
    for path, value in jax.tree_util.tree_leaves_with_path(state):
        if value.size >= min_size and value.sharding.is_fully_replicated:
            found.append((jax.tree_util.keystr(path), value.shape))
    return found


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins a multi-process JAX run (TPU pods auto-detect; elsewhere pass or export the coordinator).

    Reads RINGJAX_COORDINATOR / RINGJAX_NUM_PROCESSES / RINGJAX_PROCESS_ID when arguments are omitted.
    A no-op for a single process without a coordinator.
    """
    coordinator_address = coordinator_address or os.environ.get("RINGJAX_COORDINATOR")
    if num_processes is None and "RINGJAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["RINGJAX_NUM_PROCESSES"])
    if process_id is None and "RINGJAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["RINGJAX_PROCESS_ID"])
    if coordinator_address is None and num_processes in (None, 1):
        return
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
