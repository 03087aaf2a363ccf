"""Weight updates as deltas: only the elements that changed since the version an engine holds, with a checksum of
every tensor so that an update applied to the wrong base, lost or corrupted on the way is detected.

A policy update changes every float32 master weight, but engines receive weights in a lower precision (bfloat16,
`rollout.weight_dtype`), and at RL learning rates most updates are smaller than half a bfloat16 step: the rounded
value does not move. The delta holds, per tensor, where its bits changed and the new values there; "where" is the
smaller of the flat indices (4 bytes per changed element) and a bitmask (1 bit per element), and a tensor where too
much changed to gain anything goes whole. Comparing bits, not values, makes NaNs and signed zeros exact.

`apply_delta` rebuilds the new weights from the engine's copy of the base version and checks every tensor against
the sender's CRC-32; any difference raises `DeltaMismatch`, and the sender then sends the full weights (see
`rollout.ray_pool.RayEnginePool.update_weights`).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np


class DeltaMismatch(ValueError):
    """A delta does not fit the weights it was applied to (another version, a missing tensor, a checksum that
    differs); names the tensor or the versions. The sender repairs it with a full update."""


def checksum(array: np.ndarray) -> int:
    """CRC-32 of the array's bytes (C order)."""
    return zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _bits(array: np.ndarray) -> np.ndarray:
    """The array's elements as unsigned integers of the same width, flat (a view when it can be)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(np.dtype(f"u{flat.dtype.itemsize}")) if flat.dtype.itemsize in (1, 2, 4, 8) else flat


@dataclasses.dataclass(frozen=True)
class WeightDelta:
    """Turns the weights of `base_version` into those of `version`."""

    base_version: int
    version: int
    sparse: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (where, new values there); where: flat indices
    # (int32 / int64) or a bitmask over the flat tensor (uint8, `np.packbits`)
    whole: dict[str, np.ndarray]  # tensors sent in full (new, reshaped or retyped, or mostly changed)
    checksums: dict[str, int]  # every tensor of the new weights

    @property
    def nbytes(self) -> int:
        return (sum(i.nbytes + v.nbytes for i, v in self.sparse.values())
                + sum(a.nbytes for a in self.whole.values()) + 8 * len(self.checksums))

    @property
    def changed(self) -> int:
        """Elements this delta writes."""
        return sum(len(v) for _, v in self.sparse.values()) + sum(a.size for a in self.whole.values())


def make_delta(base: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray], base_version: int, version: int,
               *, whole_above: float = 0.75) -> WeightDelta:
    """The delta from `base` to `new` (both {name: array} on the host). A tensor goes whole when its sparse form
    would take more than `whole_above` of its bytes."""
    sparse, whole = {}, {}
    for name, value in new.items():
        value = np.asarray(value)
        old = base.get(name)
        if old is None or old.shape != value.shape or old.dtype != value.dtype:
            whole[name] = value
            continue
        moved = _bits(value) != _bits(old)
        at = np.flatnonzero(moved)
        if not len(at):
            continue
        at = at.astype(np.int32 if value.size < 2**31 else np.int64)
        where = at if at.nbytes <= -(-value.size // 8) else np.packbits(moved)
        if where.nbytes + len(at) * value.itemsize > whole_above * value.nbytes:
            whole[name] = value
        else:
            sparse[name] = (where, np.ascontiguousarray(value).reshape(-1)[at])
    return WeightDelta(int(base_version), int(version), sparse, whole,
                       {name: checksum(np.asarray(v)) for name, v in new.items()})


def apply_delta(base: Mapping[str, np.ndarray], delta: WeightDelta, base_version: int) -> dict[str, np.ndarray]:
    """The weights of `delta.version`, from `base` (the weights of `base_version`; never modified: changed tensors
    are copies, the others are shared). Raises `DeltaMismatch` unless every tensor matches its checksum."""
    if base_version != delta.base_version:
        raise DeltaMismatch(f"the delta to version {delta.version} applies to version {delta.base_version}, "
                            f"these weights are version {base_version}")
    missing = sorted(set(delta.checksums) - set(base) - set(delta.whole))
    if missing:
        raise DeltaMismatch(f"the delta to version {delta.version} needs tensors these weights lack: {missing[:3]}")
    out = {}
    for name in delta.checksums:
        if name in delta.whole:
            out[name] = delta.whole[name]
        elif name in delta.sparse:
            where, values = delta.sparse[name]
            value = np.array(base[name], copy=True)
            flat = value.reshape(-1)
            if where.dtype == np.uint8:
                if where.size != -(-flat.size // 8):
                    raise DeltaMismatch(f"tensor {name!r}: the delta's bitmask has {where.size} bytes, its "
                                        f"{flat.size} elements need {-(-flat.size // 8)}")
                where = np.unpackbits(where, count=flat.size).view(bool)
                if np.count_nonzero(where) != len(values):
                    raise DeltaMismatch(f"tensor {name!r}: the delta's bitmask and values disagree")
            elif len(where) and (where.min() < 0 or where.max() >= flat.size):
                raise DeltaMismatch(f"tensor {name!r}: delta indices outside its {flat.size} elements")
            flat[where] = values
            out[name] = value
        else:
            out[name] = np.asarray(base[name])
        if checksum(out[name]) != delta.checksums[name]:
            raise DeltaMismatch(f"tensor {name!r}: checksum differs after applying the delta from version "
                                f"{delta.base_version} to {delta.version}")
    return out


def cast_weights(weights: Mapping[str, np.ndarray], dtype: str | None) -> dict[str, np.ndarray]:
    """{name: host array}, floating tensors cast to `dtype` ("bfloat16", "float32", ...; None: as they are)."""
    out = {name: np.asarray(value) for name, value in weights.items()}
    if dtype is None:
        return out
    target = jnp.dtype(dtype)
    return {name: v.astype(target) if jnp.issubdtype(v.dtype, jnp.floating) else v for name, v in out.items()}
