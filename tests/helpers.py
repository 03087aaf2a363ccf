"""Shared test helpers (importable from any test module: pytest puts tests/ on sys.path)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import ringjax


def random_model(cfg, seed=0):
    """A model of `cfg` with numpy-drawn parameters (no jax init compile); same seed -> same parameters.

    std 0.1 for matrices, norm weights 1 + N(0, 0.1), expert bias N(0, 0.3): far from the 0.02 init, so
    attention is far from uniform and routing depends on the bias.
    """
    graphdef, abstract = nnx.split(ringjax.abstract_model(cfg))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            value = 1 + 0.1 * rng.normal(size=x.shape)
        elif "expert_bias" in name:
            value = 0.3 * rng.normal(size=x.shape)
        else:
            value = 0.1 * rng.normal(size=x.shape)
        return jnp.asarray(value, x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, abstract))


_OWN_LINES = ("ringjax: ", "sft: ", "eval after ", "| ", "|---")  # ringjax's lines and its accuracy table


def foreign_lines(log: str) -> list[str]:
    """The lines of a `ringjax train` console log that ringjax did not print (its JSON summary runs from a "{" to a
    "}" line)."""
    foreign, in_summary = [], False
    for line in log.splitlines():
        if line in ("{", "}"):
            in_summary = line == "{"
        elif line and not in_summary and not line.startswith(_OWN_LINES):
            foreign.append(line)
    return foreign
