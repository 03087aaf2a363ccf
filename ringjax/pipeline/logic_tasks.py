"""Synthetic logic tasks for the embedded demo: small countdown puzzles, and the teacher's traces for them.

- prompt: `"Make 10 from 2 3 5.\\n"`: three numbers in 1..`max_number` (ascending; each usable at most once, not all
  needed) and a target in 1..`max_target` that is none of them, reachable with + - * / through positive whole
  intermediate results. Scored by `rollout.rewards.logic` (task "countdown", use_all false) on the last
  `\\boxed{EXPR}`; the prompt is short enough for the demo's tiny model, so the answer format is learnt from the
  teacher's traces, as for math;
- teacher: one `a op b=c.` step per operation of the solution with the fewest operations, then `\\boxed{EXPR}`,
  e.g. `"3+2=5. 5*4=20. \\boxed{(3+2)*4}"`. With probability `error_rate` it slips: one step's operator is swapped
  for another (its written result kept), and the boxed expression, built with the swapped operator, misses the
  target (checked with the verifier).
"""

from __future__ import annotations

import functools
import itertools
import json
from fractions import Fraction

import numpy as np

from ringjax.data import PromptRecord
from rollout.rewards.logic import countdown, logic_reward, make_record

LOGIC = "logic"
OPS = "+-*/"
# a step (left, op, right) of a solution; an operand is ("n", number) or ("s", index of an earlier step)
Step = tuple[tuple[str, int], str, tuple[str, int]]


def logic_tasks(n: int, seed: int, *, max_number: int = 9, max_target: int = 30) -> list[PromptRecord]:
    """`n` distinct countdown prompts of three numbers in 1..`max_number`, targets in 1..`max_target`."""
    puzzles = _puzzles(max_number, max_target)
    if n > len(puzzles):
        raise ValueError(f"asked for {n} logic prompts, only {len(puzzles)} distinct ones exist "
                         f"(max_number={max_number}, max_target={max_target})")
    out = []
    for i in np.random.default_rng(seed).permutation(len(puzzles))[:n]:
        numbers, target = puzzles[i]
        data = {"task": countdown.TASK, "numbers": list(numbers), "target": target, "use_all": False}
        out.append(make_record(data, f"Make {target} from {' '.join(map(str, numbers))}.\n"))
    return out


@functools.cache
def _puzzles(max_number: int, max_target: int) -> list[tuple[tuple[int, ...], int]]:
    """Every (numbers, target) of `logic_tasks`, in a fixed order."""
    out = []
    for numbers in itertools.combinations_with_replacement(range(1, max_number + 1), 3):
        reachable = {v for v in _values([Fraction(x) for x in numbers]) if v.denominator == 1}
        out += [(numbers, t) for t in range(1, max_target + 1) if t in reachable and t not in numbers]
    return out


def _values(items: list[Fraction]) -> set[Fraction]:
    """Every value of one or more operations over some of `items`, through positive whole results."""
    out = set()
    for i, j in itertools.permutations(range(len(items)), 2):
        rest = [items[k] for k in range(len(items)) if k not in (i, j)]
        for op in OPS:
            value = countdown.apply_op(items[i], op, items[j])
            if value > 0 and value.denominator == 1:
                out.add(value)
                out |= _values(rest + [value])
    return out


def solution_steps(numbers: list[int], target: int) -> list[Step]:
    """The steps of a fewest-operation solution through positive whole results (deterministic)."""
    for depth in range(1, len(numbers)):
        found = _search([(Fraction(x), ("n", x)) for x in numbers], Fraction(target), depth, [])
        if found is not None:
            return found
    raise ValueError(f"no countdown solution makes {target} from {numbers}")


def _search(items, target: Fraction, ops_left: int, steps: list[Step]) -> list[Step] | None:
    if ops_left == 0:
        return steps if items[0][0] == target else None  # the last step's result comes first
    for i, j in itertools.permutations(range(len(items)), 2):
        (a, ref_a), (b, ref_b) = items[i], items[j]
        rest = [items[k] for k in range(len(items)) if k not in (i, j)]
        for op in OPS:
            value = countdown.apply_op(a, op, b)
            if value > 0 and value.denominator == 1:
                found = _search([(value, ("s", len(steps)))] + rest, target, ops_left - 1,
                                steps + [(ref_a, op, ref_b)])
                if found is not None:
                    return found
    return None


def render(steps: list[Step], ops: list[str]) -> tuple[list[str], str]:
    """(step lines "a op b=c." with each step's value under its original operator, the expression under `ops`)."""
    values: list[Fraction] = []
    texts: list[tuple[str, int]] = []
    lines = []
    for (ref_a, op, ref_b), shown in zip(steps, ops):
        a, b = (values[r[1]] if r[0] == "s" else Fraction(r[1]) for r in (ref_a, ref_b))
        ta, tb = (texts[r[1]] if r[0] == "s" else (str(r[1]), countdown.PRECEDENCE[""]) for r in (ref_a, ref_b))
        values.append(countdown.apply_op(a, op, b))
        texts.append((countdown.join(ta, shown, tb), countdown.PRECEDENCE[shown]))
        lines.append(f"{a}{shown}{b}={values[-1]}.")
    return lines, texts[-1][0]


def logic_teacher_response(record: PromptRecord, rng: np.random.Generator, error_rate: float) -> str:
    """The teacher's response to a `logic_tasks` record (no end token); one slip with probability `error_rate`."""
    try:
        data = json.loads(record.answer or "")
        numbers, target = data["numbers"], data["target"]
        if data["task"] != countdown.TASK or data.get("use_all"):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"prompt {record.id} is not a logic_tasks countdown prompt: {record.answer!r}") from None
    steps = solution_steps(numbers, target)
    ops = [op for _, op, _ in steps]
    if rng.random() < error_rate:
        slips = [(k, op) for k in range(len(steps)) for op in OPS if op != ops[k]]
        for i in rng.permutation(len(slips)):
            k, op = slips[i]
            lines, expr = render(steps, ops[:k] + [op] + ops[k + 1:])
            if logic_reward(record, f"\\boxed{{{expr}}}").score == 0.0:
                return " ".join(lines) + f" \\boxed{{{expr}}}"
    lines, expr = render(steps, ops)
    return " ".join(lines) + f" \\boxed{{{expr}}}"
