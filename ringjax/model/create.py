"""Building a Ling model directly in its sharded layout (no full copy on one device)."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from ringjax.model.config import LingConfig
from ringjax.model.model import Ling
from ringjax.sharding import state_shardings


def abstract_model(cfg: LingConfig, seed: int = 0) -> Ling:
    """A model of ShapeDtypeStructs: shapes, dtypes and axes metadata, no memory."""
    return nnx.eval_shape(lambda: Ling(cfg, rngs=nnx.Rngs(seed)))


def model_shardings(cfg: LingConfig, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, abstract state, NamedSharding per variable); raises if the mesh does not divide a parameter."""
    graphdef, state = nnx.split(abstract_model(cfg))
    return graphdef, state, state_shardings(state, mesh)


def create_model(cfg: LingConfig, mesh: Mesh | None = None, seed: int = 0) -> Ling:
    """Randomly initialised model; with a mesh, each device materialises only its own shards."""
    if mesh is None:
        return Ling(cfg, rngs=nnx.Rngs(seed))
    graphdef, _, shardings = model_shardings(cfg, mesh)

    def init():  # jitted once below, with the output shardings: no device ever holds a full copy
        return jax.lax.with_sharding_constraint(nnx.state(Ling(cfg, rngs=nnx.Rngs(seed))), shardings)

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
