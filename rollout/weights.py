"""The engine-independent form of a policy's weights: a flat {path: array} mapping of a Ling model's state.

Keys are the `nnx.to_flat_state` paths joined by "/" ("moe_layers/wq", "embed"); this is what the trainer hands
to engines in other processes (Ray workers, SGLang servers) and what they load back into a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringjax.model import Ling, LingConfig, abstract_model


def flat_key(path: tuple) -> str:
    return "/".join(str(k) for k in path)


def flat_weights(model_or_state: Ling | nnx.State) -> dict[str, Any]:
    """{"moe_layers/wq": array, ...} of a model or its state (arrays as they are: device arrays stay put)."""
    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
    return {flat_key(path): leaf[...] if isinstance(leaf, nnx.Variable) else leaf
            for path, leaf in nnx.to_flat_state(state)}


def zero_weights(config: LingConfig) -> dict[str, np.ndarray]:
    """Zeros of every weight of a `config`-shaped model: the placeholder of an engine whose weights arrive later
    (from a trainer's processes, `rollout.shards`)."""
    return {flat_key(path): np.zeros(leaf.shape, leaf.dtype)
            for path, leaf in nnx.to_flat_state(nnx.state(abstract_model(config)))}


def model_from_flat(config: LingConfig, weights: Mapping[str, Any]) -> Ling:
    """A `config`-shaped model holding `weights` (cast to the model's dtypes); no init compile. Missing, unexpected
    or mis-shaped entries raise, naming them."""
    graphdef, abstract = nnx.split(abstract_model(config))
    leaves = list(nnx.to_flat_state(abstract))
    names = [flat_key(path) for path, _ in leaves]
    missing, extra = sorted(set(names) - set(weights)), sorted(set(weights) - set(names))
    if missing or extra:
        raise ValueError(f"weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    out = []
    for name, (path, leaf) in zip(names, leaves):
        spec = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        if tuple(np.shape(weights[name])) != tuple(spec.shape):
            raise ValueError(f"weights[{name!r}] has shape {tuple(np.shape(weights[name]))}, "
                             f"the model {tuple(spec.shape)}")
        value = jnp.asarray(weights[name], spec.dtype)
        out.append((path, leaf.replace(value) if isinstance(leaf, nnx.Variable) else value))
    return nnx.merge(graphdef, nnx.from_flat_state(out))
