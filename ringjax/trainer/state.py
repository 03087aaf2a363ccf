"""The train state: one pytree with explicit shardings, created sharded and donated to every step.

`params` holds the trainable variables: every `nnx.Param` outside the MTP layers. `frozen` holds the rest
(the router `ExpertBias`, MTP layers): saved and restored with the run, never differentiated nor updated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ringjax.model import Ling, LingConfig, abstract_model
from ringjax.sharding import state_shardings

TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("mtp")))


class TrainState(NamedTuple):
    params: nnx.State  # trainable variables
    frozen: nnx.State  # ExpertBias, MTP: carried unchanged
    opt_state: optax.OptState
    step: jax.Array  # int32 []: optimisation steps taken (skipped ones included)
    skipped: jax.Array  # int32 []: steps whose update was skipped (non-finite loss or gradient)
    rng: jax.Array  # typed PRNG key: the run's sampling randomness


def split_model(model: Ling) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable params, frozen rest)."""
    return nnx.split(model, TRAINABLE, ...)


def merge_model(graphdef: nnx.GraphDef, params: nnx.State, frozen: nnx.State) -> Ling:
    return nnx.merge(graphdef, params, frozen)


def abstract_train_state(cfg: LingConfig, tx: optax.GradientTransformation, mesh: Mesh | None = None
                         ) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, TrainState of ShapeDtypeStructs), with `.sharding` set when a mesh is given. No memory."""
    graphdef, params, frozen = split_model(abstract_model(cfg))
    opt_state = jax.eval_shape(tx.init, params)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    state = TrainState(params, frozen, opt_state, scalar, scalar, rng)
    if mesh is None:
        return graphdef, state
    return graphdef, with_shardings(state, train_state_shardings(state, tx, mesh))


def with_shardings(abstract, shardings):
    """`abstract` with `.sharding` set from `shardings`, a prefix tree of NamedShardings (one per variable)."""
    def one(sharding, sub):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), sub)

    return jax.tree.map(one, shardings, abstract, is_leaf=lambda x: isinstance(x, NamedSharding))


def train_state_shardings(state: TrainState, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """NamedSharding per leaf: params / frozen by the logical-axis rules, optimiser moments like their params,
    scalars (step, counts, key) replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params = state_shardings(state.params, mesh)
    frozen = state_shardings(state.frozen, mesh)
    opt_state = optax.tree_map_params(tx, lambda _, s: s, state.opt_state, params,
                                      transform_non_params=lambda _: replicated,
                                      is_leaf=lambda x: isinstance(x, nnx.Variable | NamedSharding))
    return TrainState(params, frozen, opt_state, replicated, replicated, replicated)


def init_train_state(model: Ling, tx: optax.GradientTransformation, seed: int = 0,
                     mesh: Mesh | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """Train state of `model` (already sharded when built with a mesh); the optimiser state is created in place,
    sharded like the parameters."""
    graphdef, params, frozen = split_model(model)

    def init(params, frozen):
        return TrainState(params, frozen, tx.init(params), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                          jax.random.key(seed))

    if mesh is None:
        return graphdef, jax.jit(init)(params, frozen)
    _, abstract = abstract_train_state(model.config, tx, mesh)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    with jax.set_mesh(mesh):
        return graphdef, jax.jit(init, out_shardings=shardings)(params, frozen)


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def flatten_state(state: TrainState) -> dict[str, jax.Array]:
    """{"params/embed/value": array, ...}: the checkpoint form (a flat dict, whatever optax / nnx nest inside)."""
    flat = {_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state)}
    if len(flat) != len(jax.tree.leaves(state)):
        raise ValueError("train state has leaves with colliding path names")
    return flat


def unflatten_state(like: TrainState, flat: dict[str, jax.Array]) -> TrainState:
    """Inverse of `flatten_state`, with the tree structure of `like` (a state or an abstract state)."""
    paths = [_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(like)]
    missing = [p for p in paths if p not in flat]
    if missing:
        raise ValueError(f"checkpointed state lacks {missing[:3]} ({len(missing)} missing)")
    return jax.tree.unflatten(jax.tree.structure(like), [flat[p] for p in paths])


def checkpoint_meta(cfg: LingConfig) -> dict:
    """What a checkpoint records of the model, one key per architecture field (`model.hidden_size`, ...), so a
    resume with another model fails naming the differing fields. Compute settings (dtypes, remat) may change."""
    return {f"model.{k}": v for k, v in cfg.to_dict().items() if k != "compute"}


def restore_train_state(checkpointer, like: TrainState) -> tuple[TrainState, dict, int]:
    """(state, extras, step) of the latest checkpoint of a `Checkpointer`, placed like the live state `like`."""
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    flat, extras, step = checkpointer.restore(flatten_state(target))
    return unflatten_state(target, flat), extras, step
