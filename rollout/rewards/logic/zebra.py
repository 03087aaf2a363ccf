"""Zebra puzzles (logic grids): houses in a row, each with one value per category; clues fix who lives where.

Record: {"task": "zebra", "houses": 3, "categories": [["colour", ["red", "green", "blue"]], ["pet", [...]]],
"clues": [CLUE, ...], "solution": [["green", "cat"], ...]} (house 1 first, values in category order). Values are
distinct lower-case words across all categories. A CLUE is {"kind": KIND, "a": VALUE, "b": VALUE} or, for "at"
and "not_at", {"kind": KIND, "a": VALUE, "house": N}; KIND is one of `KINDS`: at / not_at (in house N or not),
same / not_same (same house or not), left_of (directly left of), next_to (neighbours), before (somewhere left of).
The generator adds true clues until brute force (`solutions`) finds exactly one assignment, then drops clues that
are not needed; reading a record checks that the solution is a full assignment satisfying every clue.

Final answer: the last fenced block opened by "```answer", one line per house, "N: value, value" with the values
in category order (e.g. "1: green, cat"; "House 1: ..." is read too, letter case is ignored); at most `MAX_CHARS`
characters.

Reasons: "no_answer"; "malformed_answer" (a line not of that form, a house twice, a wrong number of values);
"wrong" (a house missing or a value wrong).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ringjax.data import PromptRecord
from rollout.rewards.base import Verdict
from rollout.rewards.logic.common import CORRECT, MALFORMED, WRONG, answer_block, final_block, make_record, zero

TASK = "zebra"
KINDS = ("at", "not_at", "same", "not_same", "left_of", "next_to", "before")
MAX_HOUSES, MAX_CATEGORIES, MAX_CLUES, MAX_CHARS = 5, 4, 64, 1000
WORDS = {
    "colour": ("red", "green", "blue", "yellow", "white"),
    "pet": ("dog", "cat", "bird", "fish", "horse"),
    "drink": ("tea", "coffee", "milk", "juice", "water"),
    "job": ("baker", "doctor", "pilot", "farmer", "singer"),
}
_WORD = re.compile(r"[a-z]{1,12}")
_LINE = re.compile(r"\s*(?:house\s*)?([0-9]{1,2})\s*:(.*)", re.IGNORECASE)

Solution = list[list[str]]


def read_reference(data: Mapping[str, Any]) -> dict:
    houses, categories = data.get("houses"), data.get("categories")
    if type(houses) is not int or not 2 <= houses <= MAX_HOUSES:
        raise ValueError(f"zebra: houses must be an int in 2..{MAX_HOUSES}, got {houses!r}")
    if not isinstance(categories, list) or not 1 <= len(categories) <= MAX_CATEGORIES:
        raise ValueError(f"zebra: categories must list 1..{MAX_CATEGORIES} [name, values] pairs")
    values = []
    for c in categories:
        if (not isinstance(c, list) or len(c) != 2 or not isinstance(c[0], str) or not isinstance(c[1], list)
                or len(c[1]) != houses or not all(isinstance(v, str) and _WORD.fullmatch(v) for v in c[1])):
            raise ValueError(f"zebra: category {c!r} must be [name, {houses} lower-case words]")
        values += c[1]
    if len(set(values)) != len(values):
        raise ValueError("zebra: a value appears twice among the categories")
    clues = data.get("clues")
    if not isinstance(clues, list) or len(clues) > MAX_CLUES:
        raise ValueError(f"zebra: clues must be a list of at most {MAX_CLUES}")
    for clue in clues:
        _check_clue(clue, set(values), houses)
    solution = data.get("solution")
    if (not isinstance(solution, list) or len(solution) != houses
            or not all(isinstance(h, list) and len(h) == len(categories) and all(isinstance(v, str) for v in h)
                       for h in solution)
            or any(sorted(h[i] for h in solution) != sorted(c[1]) for i, c in enumerate(categories))):
        raise ValueError("zebra: solution must give every house one value of each category, each value once")
    where = positions(solution)
    if not all(holds(clue, where) for clue in clues):
        raise ValueError("zebra: the solution breaks a clue")
    return {"solution": [tuple(h) for h in solution], "categories": len(categories)}


def _check_clue(clue: Any, values: set[str], houses: int) -> None:
    if not isinstance(clue, dict) or clue.get("kind") not in KINDS or not _known(clue.get("a"), values):
        raise ValueError(f"zebra: clue {clue!r} needs a kind in {KINDS} and a value 'a' of the puzzle")
    if clue["kind"] in ("at", "not_at"):
        if type(clue.get("house")) is not int or not 1 <= clue["house"] <= houses:
            raise ValueError(f"zebra: clue {clue!r} needs a house in 1..{houses}")
    elif not _known(clue.get("b"), values):
        raise ValueError(f"zebra: clue {clue!r} needs a value 'b' of the puzzle")


def _known(value: Any, values: set[str]) -> bool:
    return isinstance(value, str) and value in values


def score(ref: dict, response: str) -> Verdict:
    block, reason = final_block(response, MAX_CHARS)
    if block is None:
        return zero(reason)
    answer = parse_houses(block, ref["categories"])
    if answer is None:
        return zero(MALFORMED)
    return CORRECT if answer == dict(enumerate(ref["solution"], 1)) else zero(WRONG)


def parse_houses(text: str, categories: int) -> dict[int, tuple[str, ...]] | None:
    """{house: values} of lines "N: v1, v2"; None when a line is malformed or a house repeats."""
    lines = text.strip().splitlines()
    if len(lines) > 2 * MAX_HOUSES:
        return None
    out: dict[int, tuple[str, ...]] = {}
    for line in lines:
        m = _LINE.fullmatch(line)
        if m is None or int(m.group(1)) in out:
            return None
        values = tuple(v.strip().lower() for v in m.group(2).split(","))
        if len(values) != categories or not all(values):
            return None
        out[int(m.group(1))] = values
    return out


def positions(solution: Sequence[Sequence[str]]) -> dict[str, int]:
    """{value: house number}."""
    return {v: h for h, values in enumerate(solution, 1) for v in values}


def holds(clue: Mapping[str, Any], where: Mapping[str, int]) -> bool:
    kind, a = clue["kind"], where[clue["a"]]
    if kind in ("at", "not_at"):
        return (a == clue["house"]) == (kind == "at")
    b = where[clue["b"]]
    return {"same": a == b, "not_same": a != b, "left_of": a + 1 == b, "next_to": abs(a - b) == 1,
            "before": a < b}[kind]


def solutions(houses: int, categories: Sequence[tuple[str, Sequence[str]]], clues: Sequence[Mapping[str, Any]],
              limit: int = 2) -> list[Solution]:
    """Up to `limit` assignments satisfying every clue: one category's permutation at a time, each clue checked
    as soon as the categories of its values are placed."""
    level = {v: i for i, (_, values) in enumerate(categories) for v in values}
    due: list[list[Mapping[str, Any]]] = [[] for _ in categories]
    for clue in clues:
        due[max(level[clue["a"]], level.get(clue.get("b"), 0))].append(clue)
    where: dict[str, int] = {}
    found: list[Solution] = []

    def place(i: int) -> None:
        if i == len(categories):
            grid = [[""] * len(categories) for _ in range(houses)]
            for v, h in where.items():
                grid[h - 1][level[v]] = v
            found.append(grid)
            return
        values = categories[i][1]
        for perm in itertools.permutations(range(1, houses + 1)):
            where.update(zip(values, perm))
            if all(holds(c, where) for c in due[i]):
                place(i + 1)
                if len(found) >= limit:
                    return
        for v in values:
            del where[v]

    place(0)
    return found


def _true_clues(solution: Solution, categories: Sequence[tuple[str, Sequence[str]]]) -> dict[str, list[dict]]:
    """Every clue that holds for `solution`, by kind (pairs within one category only where they say something)."""
    where, houses = positions(solution), len(solution)
    level = {v: i for i, (_, values) in enumerate(categories) for v in values}
    out: dict[str, list[dict]] = {k: [] for k in KINDS}
    for v, h in where.items():
        out["at"].append({"kind": "at", "a": v, "house": h})
        out["not_at"] += [{"kind": "not_at", "a": v, "house": k} for k in range(1, houses + 1) if k != h]
    for a, b in itertools.permutations(where, 2):
        for kind in ("same", "not_same", "left_of", "next_to", "before"):
            clue = {"kind": kind, "a": a, "b": b}
            pair_in_one = level[a] == level[b] and kind in ("same", "not_same")
            symmetric_twin = kind in ("same", "not_same", "next_to") and a > b
            if holds(clue, where) and not pair_in_one and not symmetric_twin:
                out[kind].append(clue)
    return out


def generate(rng: random.Random, *, houses: int = 3, categories: int = 2) -> dict:
    """A puzzle with exactly one solution: true clues of random kinds are added until `solutions` finds one
    assignment, then clues whose removal keeps it unique are dropped (in random order)."""
    if not 2 <= houses <= MAX_HOUSES or not 1 <= categories <= MAX_CATEGORIES:
        raise ValueError(f"zebra: need 2 <= houses <= {MAX_HOUSES} and 1 <= categories <= {MAX_CATEGORIES}")
    names = rng.sample(sorted(WORDS), categories)
    cats = [(name, rng.sample(WORDS[name], houses)) for name in names]
    columns = [rng.sample(values, houses) for _, values in cats]
    solution = [[col[h] for col in columns] for h in range(houses)]
    pool = {k: v for k, v in _true_clues(solution, cats).items() if v}
    clues: list[dict] = []
    while len(solutions(houses, cats, clues)) > 1:
        kind = rng.choice(sorted(pool))
        clues.append(pool[kind].pop(rng.randrange(len(pool[kind]))))
        if not pool[kind]:
            del pool[kind]
    for clue in rng.sample(clues, len(clues)):
        rest = [c for c in clues if c is not clue]
        if len(solutions(houses, cats, rest)) == 1:
            clues = rest
    return {"task": TASK, "houses": houses, "categories": [[n, sorted(v)] for n, v in cats], "clues": clues,
            "solution": solution}


def clue_text(clue: Mapping[str, Any]) -> str:
    kind, a, b = clue["kind"], clue["a"].capitalize(), clue.get("b")
    return {"at": f"{a} is in house {clue.get('house')}.", "not_at": f"{a} is not in house {clue.get('house')}.",
            "same": f"{a} and {b} are in the same house.", "not_same": f"{a} and {b} are in different houses.",
            "left_of": f"{a} is directly left of {b}.", "next_to": f"{a} and {b} are next to each other.",
            "before": f"{a} is somewhere left of {b}."}[kind]


def prompt_text(data: Mapping[str, Any]) -> str:
    n, cats = data["houses"], data["categories"]
    has = " and ".join(f"one {name} ({', '.join(values)})" for name, values in cats)
    clues = "".join(f"- {clue_text(c)}\n" for c in data["clues"])
    form = ", ".join(name for name, _ in cats)
    return (f"{n} houses stand in a row, numbered 1-{n} from the left. Each has {has}, all different.\n"
            f"Clues:\n{clues}End with one line per house, \"N: {form}\", in a block:\n```answer\n...\n```\n")


def record(rng: random.Random, **options: Any) -> PromptRecord:
    data = generate(rng, **options)
    return make_record(data, prompt_text(data))


def reference_answer(data: Mapping[str, Any]) -> str:
    """The final answer of the brute-force solution (the first assignment `solutions` finds)."""
    found = solutions(data["houses"], data["categories"], data["clues"], limit=1)
    if not found:
        raise ValueError("zebra: the clues admit no assignment")
    return answer_block("\n".join(f"{h}: {', '.join(values)}" for h, values in enumerate(found[0], 1)))
