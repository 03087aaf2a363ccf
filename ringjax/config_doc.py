"""A resolved config as YAML with every field's description as a comment (`ringjax config`), read from the code.

Each config field is documented on the line that defines it in its frozen dataclass: a trailing `# comment`, or a
string literal on the line below it (an attribute docstring). `field_doc` reads either back from the class source
with `simple_parsing`'s attribute-docstring helper, so the printed reference is generated from the dataclasses and
cannot drift from them (verl and MaxText keep their commented base configs in step by hand). Comment lines ABOVE a
field are section headings (`# Routing.` in `LingConfig`), not descriptions. tests/test_config_doc.py fails on
any field of a dataclass reachable from `PipelineConfig` that has no description.

    print(commented_yaml(load_pipeline("configs/ring_lite.yaml", ["rl.loss.alpha=0.4"])))
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

import yaml
from simple_parsing.docstring import get_attribute_docstring

_WIDTH = 1 << 30  # one line per value, however long


@functools.cache
def field_doc(cls: type, name: str) -> str:
    """The one-line description of field `name` of dataclass `cls` ("" when it has none)."""
    doc = get_attribute_docstring(cls, name, accumulate_from_bases=False)
    return " ".join((doc.docstring_below or doc.comment_inline).split())


def config_classes(root: type) -> list[type]:
    """`root` and every dataclass reachable from it through field types (`X`, `X | None`, `tuple[X, ...]`)."""
    seen: list[type] = []

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for kind in _nested(hints[f.name]):
                visit(kind)

    visit(root)
    return seen


def _nested(hint: Any) -> list[type]:
    if dataclasses.is_dataclass(hint):
        return [hint]
    return [k for arg in typing.get_args(hint) for k in _nested(arg)]


def undocumented(root: type) -> list[str]:
    """`Class.field` of every field reachable from `root` without a description."""
    return [f"{cls.__name__}.{f.name}" for cls in config_classes(root) for f in dataclasses.fields(cls)
            if not field_doc(cls, f.name)]


def plain(value: Any) -> Any:
    """`value` as YAML-able data: dataclasses -> dicts, tuples -> lists (what `yaml.safe_load` gives back)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _flow(value: Any) -> str:
    """`value` as one line of YAML (flow style; double-quoted when a string would span lines)."""
    text = yaml.safe_dump(plain(value), default_flow_style=True, width=_WIDTH, sort_keys=False)
    text = text.removesuffix("\n...\n").removesuffix("\n")
    if "\n" in text:
        text = yaml.safe_dump(plain(value), default_flow_style=True, width=_WIDTH, default_style='"').rstrip("\n")
    return text


def _lines(cfg: Any, pad: str) -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        value, doc = getattr(cfg, f.name), field_doc(type(cfg), f.name)
        comment = f"  # {doc}" if doc else ""
        if dataclasses.is_dataclass(value):
            out += [f"{pad}{f.name}:{comment}", *_lines(value, pad + "  ")]
        elif isinstance(value, tuple | list) and value and all(dataclasses.is_dataclass(v) for v in value):
            out.append(f"{pad}{f.name}:{comment}")
            for item in value:
                lines = _lines(item, pad + "  ")
                out += [pad + "- " + lines[0].removeprefix(pad + "  "), *lines[1:]]
        else:
            out.append(f"{pad}{f.name}: {_flow(value)}{comment}")
    return out


def commented_yaml(cfg: Any, header: typing.Sequence[str] = ()) -> str:
    """The config dataclass instance `cfg` as block YAML, one `key: value  # description` line per field;
    `header` lines come first as comments. `yaml.safe_load` of the result equals `plain(cfg)`."""
    return "\n".join([*(f"# {line}" for line in header), *_lines(cfg, "")]) + "\n"
