"""Device mesh, logical axis names and the one table that maps them to mesh axes.

Every parameter carries logical axis names in its `axes` metadata; activations are constrained with
`constrain(x, axes)`. `RULES` maps each logical name to mesh axes (MaxText's `logical_axis_rules`, kept
to one small table). The mesh always has the five axes (data, fsdp, context, expert, tensor); unused ones
have size 1. Multi-host: call `initialize_distributed()` before building the mesh and `jax.devices()` spans
every process.

Context parallelism: `context` splits a row's tokens (logical `seq`) across devices. Attention gathers the
keys and values of the whole row (`ringjax.model.attention`), every other op works token by token. The rollout
engine decodes one token per row at a time, so it traces inside `use_mesh(mesh, rows_over_context=True)`: there
the context axis splits its rows instead (logical `batch` takes it, `seq` is not split).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")

# logical name -> mesh axes (None: replicated). Parameters shard their `embed` dimension over fsdp and
# context (ZeRO-3 style: the context devices hold different tokens, so they can share the weights' storage as
# fsdp devices do), experts over `expert`, and heads / MLP width / vocabulary over `tensor`.
RULES: dict[str, tuple[str, ...] | None] = {
    # activations
    "batch": BATCH_AXES,
    "seq": ("context",),
    "act_embed": None,
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_vocab": ("tensor",),
    "cache_seq": None,
    # parameters
    "layers": None,
    "vocab": ("tensor",),
    "embed": ("fsdp", "context"),
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


_ROWS_OVER_CONTEXT = contextvars.ContextVar("rows_over_context", default=False)


@contextlib.contextmanager
def decode_layout():
    """Inside (at trace time): logical `batch` is split over the context axis too and `seq` is not split. Decoding
    (the rollout engine, `ringjax.generate`) traces in it: its rows split over every device, each decoding its own
    rows' tokens."""
    token = _ROWS_OVER_CONTEXT.set(True)
    try:
        yield
    finally:
        _ROWS_OVER_CONTEXT.reset(token)


def _rule(name: str) -> tuple[str, ...]:
    if name not in RULES:
        raise KeyError(f"logical axis {name!r} has no entry in ringjax.sharding.RULES")
    if _ROWS_OVER_CONTEXT.get() and name in ("batch", "seq"):
        return BATCH_AXES + ("context",) if name == "batch" else ()
    return RULES[name] or ()


def make_mesh(data: int = 1, fsdp: int = -1, expert: int = 1, tensor: int = 1, context: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, context, expert, tensor) mesh; one size may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_sizes({"data": data, "fsdp": fsdp, "context": context, "expert": expert,
                                "tensor": tensor}, len(devices))
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


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, rows_over_context: bool = False):
    """`jax.set_mesh(mesh)` (nothing when `mesh` is None: single device); with `rows_over_context`, inside
    a layout where the context axis splits rows, not tokens (the rollout engine)."""
    with contextlib.ExitStack() as stack:
        if mesh is not None:
            stack.enter_context(jax.set_mesh(mesh))
            if rows_over_context:
                stack.enter_context(decode_layout())
        yield


def batch_shards(mesh: Mesh, rows_over_context: bool = False) -> int:
    """How many ways activations split their batch (rows) on `mesh`: the product of the BATCH_AXES sizes (and
    the context size for the rollout engine, see `rows_over_context`)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES + (("context",) if rows_over_context else ()))


def context_size(mesh: Mesh | jax.sharding.AbstractMesh | None) -> int:
    """How many ways a row's tokens are split (1 without a mesh)."""
    return 1 if mesh is None or "context" not in mesh.shape else mesh.shape["context"]


def tokens_split(mesh: Mesh | jax.sharding.AbstractMesh | None) -> bool:
    """Whether activations traced now split a row's tokens (logical `seq`) over the context axis."""
    return mesh is not None and logical_to_spec(("seq",), mesh)[0] is not None


def check_context(mesh: Mesh | None, lengths: dict[str, int]) -> None:
    """ValueError naming the first `{config name: row length}` that the mesh's context axis does not divide."""
    ways = context_size(mesh)
    for name, n in lengths.items():
        if n % ways:
            raise ValueError(f"{name}={n} is not divisible by the mesh context axis (size {ways}): each of its "
                             f"devices holds an equal share of a row's tokens")


def check_rows(mesh: Mesh | None, rows: dict[str, int], rows_over_context: bool = False) -> None:
    """ValueError naming the first `{config name: row count}` that the mesh's batch axes (and with
    `rows_over_context` its context axis: the rollout engine's rows) do not divide."""
    if mesh is None:
        return
    ways = batch_shards(mesh, rows_over_context)
    axes = BATCH_AXES + (("context",) if rows_over_context else ())
    for name, n in rows.items():
        if n % ways:
            raise ValueError(f"{name}={n} is not divisible by the mesh axes {axes} (size {ways})")


def logical_to_spec(axes: Sequence[str | None], mesh: Mesh | None = None) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec, dropping mesh axes of size 1 or used twice."""
    used: set[str] = set()
    spec = []
    for name in axes:
        if name is None:
            spec.append(None)
            continue
        mesh_axes = [a for a in _rule(name) if a not in used and (mesh is None or mesh.shape[a] > 1)]
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


def replicated(tree):
    """`tree`'s arrays constrained to every device holding all of them (a no-op outside `jax.set_mesh`): what a
    jitted function returns to the host, which reads it on every process (a row split over devices of another
    process could not be read here)."""
    return jax.tree.map(lambda x: constrain(x, (None,) * x.ndim), tree)


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


def _distributed_state():
    from jax._src import distributed  # the state jax.distributed.initialize keeps (no public accessor)

    return distributed.global_state


def coordination_client():
    """The client of JAX's coordination service that `initialize_distributed` made (its key-value store carries
    `ringjax.trainer.driver`'s messages); None in a run of one process."""
    return _distributed_state().client


def process_layout() -> tuple[int, int]:
    """(this process's index, the number of processes) of a run joined by `initialize_distributed`, read without
    starting JAX's backends (so that Ray may still fork this process); (0, 1) when it joined none."""
    state = _distributed_state()
    return (state.process_id or 0, state.num_processes or 1) if state.client is not None else (0, 1)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, detect: bool = False) -> None:
    """Joins a multi-process JAX run (once; later calls do nothing).

    Reads RINGJAX_COORDINATOR / RINGJAX_NUM_PROCESSES / RINGJAX_PROCESS_ID when arguments are omitted. Without
    any of them: with `detect` (`mesh.distributed: true`), `jax.distributed` finds the cluster itself (TPU pods,
    Slurm, Open MPI) and a ValueError says what to set when it cannot; otherwise a no-op (one process).
    """
    coordinator_address = coordinator_address or os.environ.get("RINGJAX_COORDINATOR")
    if num_processes is None and "RINGJAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["RINGJAX_NUM_PROCESSES"])
    if process_id is None and "RINGJAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["RINGJAX_PROCESS_ID"])
    if jax.distributed.is_initialized():
        return
    if coordinator_address is None and num_processes in (None, 1):
        if not detect:
            return
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"mesh.distributed: jax.distributed found no cluster here ({e}); outside TPU pods, "
                             f"Slurm and Open MPI set RINGJAX_COORDINATOR=host:port, RINGJAX_NUM_PROCESSES and "
                             f"RINGJAX_PROCESS_ID on every process") from e
        return
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
