"""Countdown and the 24 game: reach a target from given numbers with + - * / and parentheses, checked exactly.

Record: {"task": "countdown", "numbers": [4, 7, 8, 8], "target": 24, "use_all": true}. With `use_all` (the 24
game) every given number is used exactly once; without it (countdown) each at most once. A number given twice may
be used twice.

Final answer: the last `\\boxed{EXPR}`, EXPR an arithmetic expression of non-negative integers, binary + - * /,
unary minus and parentheses; `\\times`, `\\cdot` and `×` read as *, `\\div` and `÷` as /. Nothing else: no
"= 24", no names, no powers, no floor division, no decimals.

The expression is never evaluated by Python: it is parsed with `ast` (after a character whitelist), every node is
checked against the whitelist above, its size is bounded (`MAX_CHARS` characters, `MAX_NODES` nodes, `MAX_DEPTH`
levels, integers up to `MAX_INT`), and it is computed with exact `fractions.Fraction` arithmetic, so 8/(3-8/3) is
exactly 24. Intermediate results may be negative or fractional; only the numbers used and the value count.

Reasons: "no_answer"; "malformed_answer" (not such an expression, or over a bound); "wrong_numbers" (a number not
given, one used more often than given, or, with use_all, one left unused); "wrong" (another value, or a division
by zero).
"""

from __future__ import annotations

import ast
import collections
import itertools
import random
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from ringjax.data import PromptRecord
from rollout.rewards.base import Verdict
from rollout.rewards.logic.common import CORRECT, MALFORMED, WRONG, final_boxed, make_record, zero

TASK = "countdown"
WRONG_NUMBERS = "wrong_numbers"
MAX_CHARS, MAX_NODES, MAX_DEPTH, MAX_INT = 200, 64, 24, 10**6
MAX_NUMBERS = 8  # numbers a record may give (the solver's search grows fast beyond)
_ALLOWED = re.compile(r"[0-9+\-*/() ]+")
_SPELLINGS = (("\\times", "*"), ("\\cdot", "*"), ("×", "*"), ("\\div", "/"), ("÷", "/"))
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "": 3}  # "": a number


class _Malformed(Exception):
    pass


def read_reference(data: Mapping[str, Any]) -> dict:
    """The checked puzzle of a record; ValueError naming the field that is wrong."""
    numbers, target, use_all = data.get("numbers"), data.get("target"), data.get("use_all", False)
    if not isinstance(numbers, list) or not 1 <= len(numbers) <= MAX_NUMBERS:
        raise ValueError(f"countdown: numbers must be a list of 1..{MAX_NUMBERS} ints, got {numbers!r}")
    for value in [*numbers, target]:
        if type(value) is not int or not 0 <= value <= MAX_INT:
            raise ValueError(f"countdown: numbers and target must be ints in 0..{MAX_INT}, got {value!r}")
    if type(use_all) is not bool:
        raise ValueError(f"countdown: use_all must be true or false, got {use_all!r}")
    return {"numbers": collections.Counter(numbers), "target": Fraction(target), "use_all": use_all}


def score(ref: dict, response: str) -> Verdict:
    boxed, reason = final_boxed(response, MAX_CHARS)
    if boxed is None:
        return zero(reason)
    try:
        tree, used = parse_expression(boxed)
    except _Malformed:
        return zero(MALFORMED)
    given = ref["numbers"]
    if any(used[n] > given[n] for n in used) or (ref["use_all"] and used != given):
        return zero(WRONG_NUMBERS)
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        return zero(WRONG)
    return CORRECT if value == ref["target"] else zero(WRONG)


def parse_expression(text: str) -> tuple[ast.expr, collections.Counter]:
    """(checked syntax tree, the integers it uses); `_Malformed` when `text` is not a bounded whitelisted
    arithmetic expression. Only `ast.parse` reads the text; nothing is executed."""
    for spelling, op in _SPELLINGS:
        text = text.replace(spelling, op)
    text = text.strip()
    if len(text) > MAX_CHARS or not _ALLOWED.fullmatch(text):
        raise _Malformed
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise _Malformed from None
    used: collections.Counter = collections.Counter()
    nodes = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            raise _Malformed
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            stack += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value <= MAX_INT:
            used[node.value] += 1
        else:
            raise _Malformed
    return tree, used


def _evaluate(node: ast.expr) -> Fraction:
    """Exact value of a tree `parse_expression` accepted (its depth is bounded, so this recursion is too)."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -_evaluate(node.operand)
    return apply_op(_evaluate(node.left), _BINOPS[type(node.op)], _evaluate(node.right))


# ------------------------------------------------------------------------------------------ solver and generator


def solve(numbers: Sequence[int], target: int, use_all: bool, *, natural: bool = False) -> str | None:
    """An expression reaching `target` under the record's rules, with the fewest operations (iterative deepening),
    or None. `natural`: only steps whose result is a positive integer (the TV show's rule; nicer traces)."""
    leaves = [(Fraction(n), str(n), PRECEDENCE[""]) for n in numbers]
    if not use_all:
        for value, text, _ in leaves:
            if value == target:
                return text
    depths = [len(numbers) - 1] if use_all else range(1, len(numbers))
    for depth in depths:
        found = _search(leaves, Fraction(target), depth, use_all, natural, set())
        if found is not None:
            return found
    return None


def _search(items, target: Fraction, ops_left: int, use_all: bool, natural: bool, seen: set) -> str | None:
    if ops_left == 0:
        hits = [t for v, t, _ in items if v == target] if not use_all or len(items) == 1 else []
        return hits[0] if hits else None
    key = (tuple(sorted(v for v, _, _ in items)), ops_left)
    if key in seen:
        return None
    seen.add(key)
    for i, j in itertools.combinations(range(len(items)), 2):
        rest = [items[k] for k in range(len(items)) if k not in (i, j)]
        for a, b in ((items[i], items[j]), (items[j], items[i])):
            for op in "+-*/":
                if (op in "+*" and a is items[j]) or (op == "/" and b[0] == 0):
                    continue  # commutative: one order is enough
                value = apply_op(a[0], op, b[0])
                if natural and (value <= 0 or value.denominator != 1):
                    continue
                item = (value, join(a[1:], op, b[1:]), PRECEDENCE[op])
                found = _search(rest + [item], target, ops_left - 1, use_all, natural, seen)
                if found is not None:
                    return found
    return None


def apply_op(a: Fraction, op: str, b: Fraction) -> Fraction:
    """`a op b` for op in "+-*/" (exact; ZeroDivisionError for b == 0 under "/")."""
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b


def join(a: tuple[str, int], op: str, b: tuple[str, int]) -> str:
    """`a op b` for (text, precedence) operands, with parentheses only where precedence needs them."""
    left = a[0] if a[1] >= PRECEDENCE[op] else f"({a[0]})"
    right = b[0] if b[1] > PRECEDENCE[op] or (b[1] == PRECEDENCE[op] and op in "+*") else f"({b[0]})"
    return f"{left}{op}{right}"


def generate(rng: random.Random, *, count: int = 4, max_number: int = 13, target: int | None = 24,
             use_all: bool = True, max_target: int = 100) -> dict:
    """Puzzle data with a solution: `count` numbers in 1..`max_number`. With `target` given, numbers are drawn
    until `solve` reaches it (the 24 game); with None, the target is the value of a random expression over the
    numbers (all of them with `use_all`, else at least two), a positive integer up to `max_target` that is not
    itself one of the numbers."""
    if not 1 <= count <= MAX_NUMBERS or max_number < 1:
        raise ValueError(f"countdown: need 1 <= count <= {MAX_NUMBERS} and max_number >= 1")
    for _ in range(10_000):
        numbers = [rng.randint(1, max_number) for _ in range(count)]
        if target is not None:
            if solve(numbers, target, use_all) is not None:
                return {"task": TASK, "numbers": numbers, "target": target, "use_all": use_all}
            continue
        picked = numbers if use_all else rng.sample(numbers, rng.randint(min(2, count), count))
        values = [Fraction(n) for n in picked]
        rng.shuffle(values)
        value = values[0]
        for v in values[1:]:
            op = rng.choice("+-*/")
            if op == "/" and v == 0:
                break
            value = apply_op(value, op, v)
        else:
            if value.denominator == 1 and 0 < value <= max_target and value not in numbers:
                return {"task": TASK, "numbers": numbers, "target": int(value), "use_all": use_all}
    raise ValueError(f"countdown: no puzzle found for count={count} max_number={max_number} target={target}")


def prompt_text(data: Mapping[str, Any]) -> str:
    numbers = " ".join(str(n) for n in data["numbers"])
    rule = "each exactly once" if data.get("use_all") else "each at most once"
    return (f"Use the numbers {numbers} ({rule}) with + - * / and parentheses to make {data['target']}.\n"
            "End with the expression alone in \\boxed{}, e.g. \\boxed{(1+2)*3}.\n")


def record(rng: random.Random, **options: Any) -> PromptRecord:
    data = generate(rng, **options)
    return make_record(data, prompt_text(data))


def reference_answer(data: Mapping[str, Any]) -> str:
    """A correct final answer found by the solver (for tests and teachers)."""
    found = solve(data["numbers"], data["target"], data.get("use_all", False))
    if found is None:
        raise ValueError(f"countdown: {data['numbers']} cannot make {data['target']}")
    return f"\\boxed{{{found}}}"
