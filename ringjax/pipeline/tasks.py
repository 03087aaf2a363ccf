"""Synthetic verifiable tasks for the embedded demo, and the programmatic teacher whose traces it is SFT-ed on.

- math: `"Compute 3+8-5.\\n"`, single-digit operands, + and - (and * when asked), normal precedence; the teacher
  writes one `a op b=c.` step per operator (products first, then left to right) and ends with `\\boxed{answer}`;
- code: `"Write f(x): add 3, then double.\\n"`; the teacher writes `def f(x):\\n    return (x+3)*2` (parentheses
  only where precedence needs them), checked by function-call cases on fixed inputs (`{"call": "f", "args": [x],
  "expected": y}`): the program's return values come back from the sandbox as plain data and are compared outside
  it, so an object that claims to equal anything scores 0.
With probability `error_rate` the teacher makes one slip (an arithmetic step off by 1 or 2 and carried on; a
dropped parenthesis or a constant off by 1), so its answer is wrong: the traces are imperfect, as RL needs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ringjax.data import PromptRecord
from ringjax.data.records import prompt_id

MATH, CODE = "math", "code"
CODE_INPUTS = (0, 1, -2, 5)
# (words, operator, constant) of the code tasks' operations; multiplying by 1 is left out (it is no operation)
CODE_OPS = ([(f"add {k}", "+", k) for k in range(1, 10)] + [(f"subtract {k}", "-", k) for k in range(1, 10)]
            + [(f"multiply by {k}", "*", k) for k in range(2, 10)] + [("double", "*", 2)])
_MATH_PROMPT = re.compile(r"Compute ([0-9+\-*]+)\.\n")
_CODE_PROMPT = re.compile(r"Write f\(x\): (.+), then (.+)\.\n")
_WORDS = {words: (op, k) for words, op, k in CODE_OPS}


def math_tasks(n: int, seed: int, *, terms: Sequence[int] = (2, 3), max_operand: int = 9,
               ops: str = "+-") -> list[PromptRecord]:
    """`n` distinct arithmetic prompts of `terms` operands in 0..`max_operand`, joined by operators from `ops`."""
    if min(terms) < 2 or not set(ops) <= set("+-*") or not ops:
        raise ValueError(f"need >= 2 terms and operators among '+-*', got terms={terms} ops={ops!r}")
    total = sum((max_operand + 1) ** t * len(set(ops)) ** (t - 1) for t in set(terms))
    if n > total:
        raise ValueError(f"asked for {n} math prompts, only {total} distinct ones exist")
    rng, seen, out = np.random.default_rng(seed), set(), []
    while len(out) < n:
        t = int(rng.choice(terms))
        nums = [int(v) for v in rng.integers(0, max_operand + 1, t)]
        expr = str(nums[0]) + "".join(str(o) + str(v) for o, v in zip(rng.choice(list(ops), t - 1), nums[1:]))
        if expr not in seen:
            seen.add(expr)
            prompt = f"Compute {expr}.\n"
            out.append(PromptRecord(prompt_id(prompt), prompt, MATH, answer=str(_math_trace(expr)[1])))
    return out


def code_tasks(n: int, seed: int) -> list[PromptRecord]:
    """`n` distinct "write f(x) doing two operations" prompts, with function-call tests on `CODE_INPUTS`."""
    pairs = [(a, b) for a in CODE_OPS for b in CODE_OPS]
    if n > len(pairs):
        raise ValueError(f"asked for {n} code prompts, only {len(pairs)} distinct ones exist")
    out = []
    for i in np.random.default_rng(seed).permutation(len(pairs))[:n]:
        (w1, o1, k1), (w2, o2, k2) = pairs[i]
        prompt = f"Write f(x): {w1}, then {w2}.\n"
        tests = [{"call": "f", "args": [x], "expected": _apply(_apply(x, o1, k1), o2, k2)} for x in CODE_INPUTS]
        out.append(PromptRecord(prompt_id(prompt), prompt, CODE, tests=tests))
    return out


def teacher_response(record: PromptRecord, rng: np.random.Generator, error_rate: float) -> str:
    """The teacher's response to a `math_tasks` / `code_tasks` record (no end token); one slip w.p. `error_rate`."""
    slip = rng.random() < error_rate
    if record.domain == MATH:
        m = _MATH_PROMPT.fullmatch(record.prompt)
        if m is None:
            raise ValueError(f"prompt {record.id} is not a math_tasks prompt: {record.prompt!r}")
        expr = m.group(1)
        steps, value = _math_trace(expr)
        if slip:
            step, delta = int(rng.integers(len(steps))), int(rng.choice([-2, -1, 1, 2]))
            steps, wrong = _math_trace(expr, step, delta)
            if wrong == value:  # the slip was multiplied by 0 further on: slip in the last step instead
                steps, wrong = _math_trace(expr, len(steps) - 1, delta)
            value = wrong
        return " ".join(steps) + f" \\boxed{{{value}}}"
    if record.domain == CODE:
        m = _CODE_PROMPT.fullmatch(record.prompt)
        if m is None or m.group(1) not in _WORDS or m.group(2) not in _WORDS:
            raise ValueError(f"prompt {record.id} is not a code_tasks prompt: {record.prompt!r}")
        (o1, k1), (o2, k2) = _WORDS[m.group(1)], _WORDS[m.group(2)]
        parens = o1 in "+-" and o2 == "*"
        if slip and not parens:
            which, k = int(rng.integers(2)), int(rng.choice([-1, 1]))
            k1, k2 = (k1 + k, k2) if which == 0 else (k1, k2 + k)
        body = f"(x{o1}{k1}){o2}{k2}" if parens and not slip else f"x{o1}{k1}{o2}{k2}"
        return f"def f(x):\n    return {body}"
    raise ValueError(f"prompt {record.id}: the teacher knows domains {MATH!r} and {CODE!r}, not {record.domain!r}")


def split_heldout(records: Sequence[PromptRecord], n_eval: int,
                  seed: int) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """(train, eval): `n_eval` records with distinct random ids held out; train keeps every other id."""
    ids = list(dict.fromkeys(r.id for r in records))
    if not 0 <= n_eval <= len(ids):
        raise ValueError(f"n_eval={n_eval} must lie in [0, {len(ids)}] (the number of distinct prompt ids)")
    held = {ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:n_eval]}
    first = {}
    for r in records:
        first.setdefault(r.id, r)
    return [r for r in records if r.id not in held], [r for i, r in first.items() if i in held]


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _math_trace(expr: str, slip_step: int = -1, delta: int = 0) -> tuple[list[str], int]:
    """(steps, value) of `expr`: products first, then sums left to right; step `slip_step` is off by `delta`."""
    tokens = re.findall(r"\d+|[+\-*]", expr)
    nums, ops = [int(t) for t in tokens[::2]], tokens[1::2]
    steps: list[str] = []

    def step(a: int, op: str, b: int) -> int:
        c = _apply(a, op, b) + (delta if len(steps) == slip_step else 0)
        steps.append(f"{a}{op}{b}={c}.")
        return c

    terms, signs = [nums[0]], []
    for op, b in zip(ops, nums[1:]):
        if op == "*":
            terms[-1] = step(terms[-1], op, b)
        else:
            terms.append(b)
            signs.append(op)
    value = terms[0]
    for op, b in zip(signs, terms[1:]):
        value = step(value, op, b)
    return steps, value
