"""Frozen config dataclasses from YAML / dicts, strictly: an unknown or mistyped key fails naming its full path.

    cfg = load_config(RLConfig, "configs/ring_1t_rl.yaml", overrides=["steps=20", "loss.alpha=0.4"])

Nested dataclass fields (e.g. `RLConfig.loss: LossConfig`) are built from nested mappings; every other value is
passed through and checked by the dataclass's own `__post_init__`. Overrides are `dotted.key=value` strings whose
value is parsed as YAML (`1e-6`, `true`, `[0.5, 5.0]`). `read_yaml` is the one reader of config files;
`user_path` the one resolution of a path a user gives.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

from ringjax.storage import is_url, resolve

T = TypeVar("T")


def from_dict(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """`cls(**values)` with nested dataclasses built recursively and unknown keys rejected by full name."""
    if not isinstance(values, Mapping):
        raise ValueError(f"config {prefix or cls.__name__} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        names = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ValueError(f"unknown config key(s) {names}; {cls.__name__} has {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        kind = _dataclass_of(hints[key])
        if kind is not None and isinstance(value, Mapping):
            value = from_dict(kind, value, f"{prefix}{key}.")
        elif isinstance(value, str) and _is_float(hints[key]):
            value = _float(value, f"{prefix}{key}")
        kwargs[key] = value
    return cls(**kwargs)


def _is_float(hint: Any) -> bool:
    return hint is float or (float in typing.get_args(hint) and str not in typing.get_args(hint))


def _float(value: str, name: str) -> float:
    """YAML 1.1 reads `1e-4` (no dot) as a string: accept it for a float field, reject other text by name."""
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"config {name}={value!r} is not a number") from None


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a field holds: `hint` itself, or the one dataclass of a union such as `OptimConfig | None`."""
    if dataclasses.is_dataclass(hint):
        return hint
    classes = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
    return classes[0] if len(classes) == 1 else None


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `values` with each `a.b.c=value` set (value parsed as YAML); a number after a list indexes it
    (`stages.1.steps=5`)."""
    out = _copy(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node[_index(node, p, item)] if isinstance(node, list) else node.setdefault(p, {})
            if not isinstance(node, dict | list):
                raise ValueError(f"override {item!r}: {p} is not a section")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ValueError(f"override {item!r}: {raw!r} is not a YAML value") from None
        node[_index(node, leaf, item) if isinstance(node, list) else leaf] = value
    return out


def _index(items: list, key: str, item: str) -> int:
    if not key.isdigit() or int(key) >= len(items):
        raise ValueError(f"override {item!r}: {key} is not an index of a list of {len(items)} items")
    return int(key)


def read_yaml(path: str) -> dict[str, Any]:
    """The mapping of config keys in YAML file `path`; FileNotFoundError / ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: top level must be a mapping of config keys")
    return values


def build_config(cls: type[T], values: Mapping[str, Any], overrides: Sequence[str] = (), source: str = "config") -> T:
    """`cls` from plain `values` plus dotted overrides; any error is a ValueError prefixed with `source`."""
    try:
        return from_dict(cls, apply_overrides(dict(values), overrides))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from e


def load_config(cls: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """`cls` from a YAML file (or defaults when `path` is None) plus dotted overrides."""
    return build_config(cls, read_yaml(path) if path is not None else {}, overrides, path or "config")


def user_path(path: str, key: str = "path", urls: bool = False) -> str:
    """A path as the user typed it (`~` and relative to the current folder allowed), made absolute once where it
    enters: Orbax accepts only absolute paths, and a run must not depend on the folder it is resumed from. With
    `urls`, a Cloud Storage folder `gs://bucket/prefix` is accepted as it is (`ringjax.storage`). Any other URL is
    refused, naming `key` (read as a relative path, it would become a local folder)."""
    if not urls and is_url(path):
        raise ValueError(f"{key}={path!r}: object-store URLs are not supported as paths; mount the bucket (Cloud "
                         f"Storage FUSE, s3fs) or use a shared filesystem, and give the mounted folder")
    return resolve(path, key)


def shown_path(typed: str, resolved: str) -> str:
    """A path for a message: as the user typed it, with its resolved form when they differ."""
    return resolved if typed == resolved else f"{typed} (resolved to {resolved})"


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for logs and checkpoints)."""
    return dataclasses.asdict(cfg)


def _copy(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: _copy(v) for k, v in values.items()}
    return [_copy(v) for v in values] if isinstance(values, list) else values
