"""Routing records: the experts a rollout engine used, per token and MoE layer, as compact integer arrays.

A record for a sequence of prompt P + response O tokens covers the positions the engine fed through the model:
0 .. P + O - 2 (the last response token is sampled, never fed). Row i holds, per MoE layer, the top-k expert ids
at position i, so response token j was produced at position P - 1 + j with experts `record[P - 1 + j]`. The train
step replays them (router replay, `rl.router_replay: replay`) and compares them with its own choice (routing
diagnostics, logged in every run).

Ids are stored as uint8 when the model has at most 256 experts (Ling-mini-2.0 and Ling-1T: 256), else int16: a
64k-token response of an 80-layer top-8 model takes 40 MB, not the 160 MB of int32 or the gigabytes of a JSON list.
In JSON (checkpoints of partial rollouts) a record travels as {"dtype", "shape", "b64"}.
"""

from __future__ import annotations

import base64

import numpy as np

from ringjax.typing import Int


def route_dtype(num_experts: int) -> np.dtype:
    """The smallest integer type holding every expert id."""
    return np.dtype(np.uint8) if num_experts <= 256 else np.dtype(np.int16)


def compact(ids: Int[np.ndarray, "N L X"], num_experts: int) -> Int[np.ndarray, "N L X"]:
    """`ids` cast to `route_dtype`; raises on an id outside [0, num_experts)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= num_experts):
        raise ValueError(f"expert ids outside [0, {num_experts}): min {ids.min()}, max {ids.max()}")
    return ids.astype(route_dtype(num_experts))


def to_json(ids: np.ndarray | None) -> dict | None:
    if ids is None:
        return None
    ids = np.ascontiguousarray(ids)
    return {"dtype": ids.dtype.str, "shape": list(ids.shape), "b64": base64.b64encode(ids.tobytes()).decode()}


def from_json(value: dict | None) -> np.ndarray | None:
    if value is None:
        return None
    data = base64.b64decode(value["b64"])
    return np.frombuffer(data, np.dtype(value["dtype"])).reshape(value["shape"]).copy()


def record_problem(ids: np.ndarray | None, positions: int, layers: int, top_k: int, num_experts: int) -> str | None:
    """Why `ids` is not a usable record of `positions` positions for a model with `layers` MoE layers of top-k
    routing over `num_experts` experts; None when it is."""
    if ids is None:
        return "missing"
    ids = np.asarray(ids)
    if ids.shape != (positions, layers, top_k):
        return f"shape {ids.shape}, expected {(positions, layers, top_k)}"
    if not np.issubdtype(ids.dtype, np.integer):
        return f"dtype {ids.dtype} is not an integer type"
    if ids.size and (ids.min() < 0 or ids.max() >= num_experts):
        return f"ids outside [0, {num_experts})"
    return None
