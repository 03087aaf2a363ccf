"""Plain data between a sandboxed program and the grader: a strict encoding of values and exact comparison rules.

The encoding is Python literal syntax written by `encode` for objects whose type IS a builtin plain type
(`type(x) is int`, never `isinstance`, so a subclass with a lying `__eq__`, `__hash__` or `__repr__` is refused,
not coerced): None, bool, int, float (`inf`, `-inf`, `nan` included), str, list, tuple, dict, and set / frozenset
(both written as a set). Anything else, a structure deeper than `MAX_DEPTH` or larger than `MAX_ITEMS`, an int of
more than 4300 digits, raises `NotPlain`. `encode` needs no import, so the sandbox's harness pays nothing for it.
`decode` parses the text with `ast` and rebuilds the value from exactly those node shapes (constants, containers,
unary minus, `inf`, `nan`, `set()`), checking the same bounds: nothing in it is ever evaluated.

This module runs on both sides: the grader decodes and compares with it, and the sandbox's harness (which ships
it) encodes return values with it. The comparison never runs inside the sandbox.

Comparison (`same_value(actual, expected)`), by the expected value's type:
- bool and None: the same object (`True` does not match `1`);
- int: an int equal to it, or a float with exactly that value (Python's `2 == 2.0`);
- float: an int or float within `math.isclose(rel_tol=REL_TOL, abs_tol=ABS_TOL)` (1e-9 both); NaN never matches;
- str: equal strings;
- list and tuple: the same container type (either one when `json_like`: JSON has no tuples), same length, items
  matching in order;
- dict: the same keys, values matching; set: equal as sets.
"""

from __future__ import annotations

import math

MAX_DEPTH = 64
MAX_ITEMS = 1_000_000
REL_TOL = ABS_TOL = 1e-9
_SCALARS = (type(None), bool, int, str)


class NotPlain(ValueError):
    """A value outside the plain types, or too deep or too large to encode."""


def encode(value: object) -> str:
    """`value` as a Python literal; NotPlain if any part of it is not plain data."""
    out: list[str] = []
    try:
        _enc(value, 0, out, [0])
    except ValueError as e:  # an int of more than sys.get_int_max_str_digits() digits
        raise NotPlain(str(e)) from None
    return "".join(out)


def _enc(x: object, depth: int, out: list[str], count: list[int]) -> None:
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
        raise NotPlain(f"deeper than {MAX_DEPTH} or more than {MAX_ITEMS} items")
    t = type(x)
    if t in _SCALARS:
        out.append(str.__repr__(x) if t is str else int.__repr__(x) if t is int else repr(x))
    elif t is float:
        out.append(float.__repr__(x))  # 'inf', '-inf' and 'nan' are names decode knows
    elif t is list or t is tuple or t is set or t is frozenset:
        if not x and t is not list and t is not tuple:
            out.append("set()")
            return
        out.append("[" if t is list else "(" if t is tuple else "{")
        for v in x:
            _enc(v, depth + 1, out, count)
            out.append(",")
        out.append("]" if t is list else ")" if t is tuple else "}")
    elif t is dict:
        out.append("{")
        for k, v in x.items():
            _enc(k, depth + 1, out, count)
            out.append(":")
            _enc(v, depth + 1, out, count)
            out.append(",")
        out.append("}")
    else:
        raise NotPlain(f"a {t.__name__} is not plain data")


def decode(text: str | bytes) -> object:
    """The value `encode` wrote; NotPlain for anything else."""
    import ast  # the grader's side (and the harness's, for raw asserts) only

    try:
        tree = ast.parse(text.decode("utf-8") if isinstance(text, bytes) else text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError, UnicodeDecodeError) as e:
        raise NotPlain(f"not a literal: {str(e)[:200]}") from None
    return _dec(ast, tree, 0, [0])


def _dec(ast, node, depth: int, count: list[int]) -> object:
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
        raise NotPlain(f"deeper than {MAX_DEPTH} or more than {MAX_ITEMS} items")
    kind = type(node)
    if kind is ast.Constant and type(node.value) in (type(None), bool, int, float, str):
        return node.value
    if kind is ast.Name and node.id in ("inf", "nan"):
        return math.inf if node.id == "inf" else math.nan
    if (kind is ast.UnaryOp and type(node.op) is ast.USub
            and (type(node.operand) is ast.Constant and type(node.operand.value) in (int, float)
                 or type(node.operand) is ast.Name and node.operand.id == "inf")):
        return -_dec(ast, node.operand, depth + 1, count)
    if kind is ast.List or kind is ast.Tuple:
        items = [_dec(ast, v, depth + 1, count) for v in node.elts]
        return items if kind is ast.List else tuple(items)
    if kind is ast.Set:
        return {_hashable(_dec(ast, v, depth + 1, count)) for v in node.elts}
    if kind is ast.Call and type(node.func) is ast.Name and node.func.id == "set" and not node.args \
            and not node.keywords:
        return set()
    if kind is ast.Dict and None not in node.keys:
        return {_hashable(_dec(ast, k, depth + 1, count)): _dec(ast, v, depth + 1, count)
                for k, v in zip(node.keys, node.values)}
    raise NotPlain(f"not plain data: a {kind.__name__} node")


def _hashable(x: object) -> object:
    try:
        hash(x)
    except TypeError:
        raise NotPlain(f"a {type(x).__name__} cannot be a dict key or set item") from None
    return x


def check_plain(value: object, what: str) -> object:
    """`value` itself if it is plain data, else NotPlain naming `what`."""
    try:
        encode(value)
    except NotPlain as e:
        raise NotPlain(f"{what}: {e}") from None
    return value


def same_value(actual: object, expected: object, *, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL,
               json_like: bool = False) -> bool:
    """Whether decoded `actual` matches `expected` under the rules of the module docstring."""
    te, ta = type(expected), type(actual)
    if te is bool or expected is None:
        return actual is expected
    if te is int:
        return (ta is int and actual == expected) or (ta is float and actual == expected)
    if te is float:
        return ta in (int, float) and math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    if te is str:
        return ta is str and actual == expected
    if te in (list, tuple):
        if not (ta is te or (json_like and ta in (list, tuple))) or len(actual) != len(expected):
            return False
        return all(same_value(a, e, rel_tol=rel_tol, abs_tol=abs_tol, json_like=json_like)
                   for a, e in zip(actual, expected))
    if te is dict:
        return (ta is dict and actual.keys() == expected.keys()
                and all(same_value(actual[k], v, rel_tol=rel_tol, abs_tol=abs_tol, json_like=json_like)
                        for k, v in expected.items()))
    if te in (set, frozenset):
        return ta in (set, frozenset) and actual == expected
    raise NotPlain(f"an expected {te.__name__} is not plain data")
