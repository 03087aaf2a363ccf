"""A record's code tests, parsed into cases the grader checks outside the sandbox.

Formats of `PromptRecord.tests`:
- a list whose items are any of: `{"input": str, "output": str}` stdin/stdout pairs; `{"call": name, "args": [...],
  "kwargs": {...} (optional), "expected": value}` function calls; strings of Python `assert` statements;
- a dict `{"inputs": [str, ...], "outputs": [str, ...]}` of stdin/stdout pairs (the APPS / TACO layout), or
  `{"fn_name": name, "inputs": [[arg, ...], ...], "outputs": [value, ...]}` of function calls (APPS / TACO /
  LiveCodeBench functional tests);
- a string of Python `assert` statements (MBPP, HumanEval's `def check(candidate): ...` plus `check(f)`).
Assert statements are converted to function-call cases when every statement has one of these shapes (literal
arguments and values only; `import math` lines are allowed): `assert f(...) == v` (either side), `assert W(f(...))
== W(v)` with W one of set, frozenset, sorted, list, tuple, `assert f(...)`, `assert not f(...)`, `assert f(...) is
True/False/None`, `assert math.isclose(f(...), v, rel_tol=..., abs_tol=...)`, `assert abs(f(...) - v) < tol` (or
`<=`), with an optional message; HumanEval's `candidate` becomes the function `check` is called with. Anything else
is kept as raw assert source, run by the harness in its own interpreter (`runner.py`).
Values that are not plain data (`plain.py`) raise `Unencodable`: the case cannot be graded.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import math
from collections.abc import Mapping

from rollout.rewards.code.plain import NotPlain, check_plain

MAX_ASSERT_SOURCE = 1 << 20  # bytes of assert source parsed at most
# builtins a converted assert applies to the return value; outside the sandbox, on plain data (no program code runs)
WRAPPERS = {"set": set, "frozenset": frozenset, "sorted": sorted, "list": list, "tuple": tuple}


class Unencodable(ValueError):
    """A case whose arguments or expected value are not plain data."""


@dataclasses.dataclass(frozen=True)
class IOCase:
    input: str
    output: str


@dataclasses.dataclass(frozen=True)
class CallCase:
    """`call(*args, **kwargs)` checked against `expected` by `check`: "eq" (`plain.same_value`, after applying the
    `wrapper` builtin to the return value), "truthy", "falsy", or "close" (`math.isclose` with rel_tol/abs_tol)."""

    call: str
    args: tuple
    kwargs: dict
    expected: object = None
    check: str = "eq"
    wrapper: str | None = None
    rel_tol: float = 1e-9
    abs_tol: float = 0.0
    json_like: bool = False  # expected came from JSON: lists and tuples are the same


@dataclasses.dataclass(frozen=True)
class Tests:
    io: list[IOCase]
    calls: list[CallCase]
    asserts: str  # raw assert source that could not be converted ("" when none)


def parse_tests(tests: object, record_id: str = "?") -> Tests:
    """The cases of a record's `tests`; ValueError naming the record when malformed, `Unencodable` when a value is
    not plain data."""
    where = f"prompt {record_id}: tests"
    io, calls, asserts = [], [], []
    if isinstance(tests, str):
        asserts.append(tests)
    elif isinstance(tests, Mapping):
        io, calls = _from_mapping(tests, where)
    elif isinstance(tests, list):
        for k, item in enumerate(tests):
            if isinstance(item, str):
                asserts.append(item)
            elif isinstance(item, Mapping) and "call" in item:
                calls.append(_call_case(item, f"{where}[{k}]"))
            else:
                io.append(_io_case(item, f"{where}[{k}]"))
    else:
        raise ValueError(f"{where} must be a list, dict or str, got {type(tests).__name__}")
    source = "\n".join(a for a in asserts if a.strip())
    if source:
        converted = convert_asserts(source, where)
        if converted is not None:
            calls, source = calls + converted, ""
    if not io and not calls and not source:
        raise ValueError(f"{where} is empty: nothing to verify the program against")
    return Tests(io, calls, source)


def _from_mapping(tests: Mapping, where: str) -> tuple[list[IOCase], list[CallCase]]:
    keys = set(tests)
    if keys not in ({"inputs", "outputs"}, {"fn_name", "inputs", "outputs"}):
        raise ValueError(f"{where} dict must have the keys 'inputs' and 'outputs' (and 'fn_name' for function "
                         f"calls), got {sorted(keys)}")
    ins, outs = tests["inputs"], tests["outputs"]
    if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
        raise ValueError(f"{where}: 'inputs' and 'outputs' must be lists of equal length")
    if "fn_name" not in keys:
        return [_io_case({"input": i, "output": o}, where) for i, o in zip(ins, outs)], []
    name = tests["fn_name"]
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{where}: 'fn_name' must be a Python identifier, got {name!r:.100}")
    calls = []
    for k, (args, out) in enumerate(zip(ins, outs)):
        if not isinstance(args, list):
            raise ValueError(f"{where}: inputs[{k}] must be the list of the call's arguments")
        calls.append(_call_case({"call": name, "args": args, "expected": out}, f"{where}: case {k}"))
    return [], calls


def _io_case(item: object, where: str) -> IOCase:
    if not isinstance(item, Mapping) or set(item) != {"input", "output"}:
        raise ValueError(f"{where} must be an assert string, {{'input': str, 'output': str}} or "
                         f"{{'call': name, 'args': [...], 'expected': value}}, got {item!r:.200}")
    if not isinstance(item["input"], str) or not isinstance(item["output"], str):
        raise ValueError(f"{where}: 'input' and 'output' must be strings")
    return IOCase(item["input"], item["output"])


def _call_case(item: Mapping, where: str) -> CallCase:
    if not set(item) <= {"call", "args", "kwargs", "expected"} or not {"call", "expected"} <= set(item):
        raise ValueError(f"{where} must be {{'call': name, 'args': [...], 'kwargs': {{...}}, 'expected': value}}, "
                         f"got keys {sorted(item)}")
    name, args, kwargs = item["call"], item.get("args", []), item.get("kwargs", {})
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{where}: 'call' must be a Python identifier, got {name!r:.100}")
    if not isinstance(args, list) or not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{where}: 'args' must be a list and 'kwargs' a mapping of names")
    return _checked(CallCase(name, tuple(args), dict(kwargs), item["expected"], json_like=True), where)


def _checked(case: CallCase, where: str) -> CallCase:
    try:
        check_plain(list(case.args), f"{where}: the arguments")
        check_plain(case.kwargs, f"{where}: the keyword arguments")
        check_plain(case.expected, f"{where}: the expected value")
    except NotPlain as e:
        raise Unencodable(str(e)) from None
    return case


# ---------------------------------------------------------------------------------------------- assert conversion


def convert_asserts(source: str, where: str = "tests") -> list[CallCase] | None:
    """The call cases `source` amounts to, or None when some statement has another shape (run it raw)."""
    if len(source.encode("utf-8", "surrogatepass")) > MAX_ASSERT_SOURCE:
        return None
    try:
        module = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    body, alias = _unwrap_check(module.body)
    if body is None:
        return None
    cases = []
    for node in body:
        if isinstance(node, ast.Import) and all(a.name == "math" and a.asname is None for a in node.names):
            continue
        case = _assert_case(node, alias) if isinstance(node, ast.Assert) else None
        if case is None:
            return None
        cases.append(_checked(case, f"{where}: line {node.lineno}"))
    return cases or None


def _unwrap_check(body: list[ast.stmt]) -> tuple[list[ast.stmt] | None, dict[str, str]]:
    """HumanEval: `[METADATA = ...] def check(candidate): <asserts> check(NAME)` -> (the asserts, {candidate: NAME})."""
    body = [n for n in body if not (isinstance(n, ast.Assign) and all(
        isinstance(t, ast.Name) and t.id == "METADATA" for t in n.targets))]
    check = [n for n in body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not check:
        return body, {}
    fn = check[0]
    calls = [n for n in body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
             and isinstance(n.value.func, ast.Name) and n.value.func.id == "check"]
    if (len(body) != 2 or len(calls) != 1 or len(fn.args.args) != 1 or fn.decorator_list
            or len(calls[0].value.args) != 1 or not isinstance(calls[0].value.args[0], ast.Name)):
        return None, {}
    stmts = [n for n in fn.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return stmts, {fn.args.args[0].arg: calls[0].value.args[0].id}


def _assert_case(node: ast.Assert, alias: dict[str, str]) -> CallCase | None:
    test = node.test
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        call = _call(test.operand, alias)
        return None if call is None else CallCase(*call, check="falsy")
    if isinstance(test, ast.Call) and _is_isclose(test.func):
        return _isclose_case(test, alias)
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        return _compare_case(test, alias)
    call = _call(test, alias)
    return None if call is None else CallCase(*call, check="truthy")


def _compare_case(test: ast.Compare, alias: dict[str, str]) -> CallCase | None:
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if isinstance(op, ast.Is) and isinstance(right, ast.Constant) and right.value in (None, True, False):
        call = _call(left, alias)
        return None if call is None else CallCase(*call, expected=right.value)
    if isinstance(op, (ast.Lt, ast.LtE)):  # abs(f(...) - v) < tol
        if not (isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and left.func.id == "abs"
                and len(left.args) == 1 and not left.keywords and isinstance(left.args[0], ast.BinOp)
                and isinstance(left.args[0].op, ast.Sub)):
            return None
        call, value, tol = _call(left.args[0].left, alias), _literal(left.args[0].right), _literal(right)
        if call is None or not _is_number(value) or not _is_number(tol):
            return None
        return CallCase(*call, expected=value, check="close", rel_tol=0.0, abs_tol=float(tol))
    if not isinstance(op, ast.Eq):
        return None
    for a, b in ((left, right), (right, left)):
        wrapper = _wrapper(a)
        call = _call(a.args[0] if wrapper else a, alias)
        if call is None:
            continue
        if wrapper:
            if _wrapper(b) != wrapper:
                return None
            value = _literal(b.args[0])
            try:
                expected = WRAPPERS[wrapper](value)
            except TypeError:
                return None
        else:
            expected = _literal(b)
        return None if expected is _NO else CallCase(*call, expected=expected, wrapper=wrapper)
    return None


def _isclose_case(test: ast.Call, alias: dict[str, str]) -> CallCase | None:
    if len(test.args) != 2:
        return None
    call, value = _call(test.args[0], alias), _literal(test.args[1])
    tols = {"rel_tol": 1e-9, "abs_tol": 0.0}
    for kw in test.keywords:
        tol = _literal(kw.value)
        if kw.arg not in tols or not _is_number(tol):
            return None
        tols[kw.arg] = float(tol)
    if call is None or not _is_number(value):
        return None
    return CallCase(*call, expected=value, check="close", **tols)


_NO = object()


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NO


def _is_number(x: object) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _is_isclose(func: ast.expr) -> bool:
    return ((isinstance(func, ast.Attribute) and func.attr == "isclose" and isinstance(func.value, ast.Name)
             and func.value.id == "math") or (isinstance(func, ast.Name) and func.id == "isclose"))


def _wrapper(node: ast.expr) -> str | None:
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in WRAPPERS
            and len(node.args) == 1 and not node.keywords):
        return node.func.id
    return None


def _call(node: ast.expr, alias: dict[str, str]) -> tuple[str, tuple, dict] | None:
    """(name, args, kwargs) of `name(literal, ..., key=literal)`, else None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or hasattr(builtins, node.func.id):
        return None
    args = [_literal(a) for a in node.args]
    kwargs = {k.arg: _literal(k.value) for k in node.keywords}
    if any(isinstance(a, ast.Starred) for a in node.args) or None in kwargs or _NO in args or _NO in kwargs.values():
        return None
    return alias.get(node.func.id, node.func.id), tuple(args), kwargs
