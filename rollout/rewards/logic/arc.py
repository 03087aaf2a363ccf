"""ARC-style grids: infer a transformation from input -> output examples and apply it to a test input.

Record: {"task": "arc", "rule": RULE, "train": [{"input": GRID, "output": GRID}, ...], "test": {"input": GRID,
"output": GRID}} (+ "mapping": [[from, to], ...] for "recolour"), grids being lists of rows of colours 0..9. RULE is
one of `RULES`: flip_h (mirror left-right), flip_v (upside down), rot90 / rot180 / rot270 (clockwise),
transpose, recolour (swap colours by `mapping`). Reading a record checks that the rule maps every example and the
test input to their outputs. The generator also checks that within this family the examples leave no doubt: every
rule (and the colour mapping read off the examples) that fits all examples gives the same test output.

Final answer: the last fenced block opened by "```answer", the output grid one row per line, digits separated by
spaces ("1 0 2") or written together ("102"); at most `MAX_CHARS` characters and 30 rows / columns.

Reasons: "no_answer"; "malformed_answer" (not a rectangular grid of digits); "wrong" (another shape or any
other cell).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ringjax.data import PromptRecord
from rollout.rewards.base import Verdict
from rollout.rewards.logic.common import (CORRECT, WRONG, Grid, answer_block, check_grid, final_grid,
                                          grid_text, make_record, zero)

TASK = "arc"
MAX_CHARS, MAX_EXAMPLES = 2000, 10
GEOMETRIC: dict[str, Callable[[Grid], Grid]] = {
    "flip_h": lambda g: [row[::-1] for row in g],
    "flip_v": lambda g: [list(row) for row in g[::-1]],
    "rot90": lambda g: [list(row) for row in zip(*g[::-1])],
    "rot180": lambda g: [row[::-1] for row in g[::-1]],
    "rot270": lambda g: [list(row) for row in zip(*g)][::-1],
    "transpose": lambda g: [list(row) for row in zip(*g)],
}
RULES = (*GEOMETRIC, "recolour")


def apply_rule(rule: str, grid: Grid, mapping: Mapping[int, int] | None = None) -> Grid:
    if rule == "recolour":
        return [[(mapping or {}).get(c, c) for c in row] for row in grid]
    return GEOMETRIC[rule](grid)


def read_reference(data: Mapping[str, Any]) -> dict:
    rule, train, test = data.get("rule"), data.get("train"), data.get("test")
    if rule not in RULES:
        raise ValueError(f"arc: rule must be one of {RULES}, got {rule!r}")
    if not isinstance(train, list) or not 1 <= len(train) <= MAX_EXAMPLES:
        raise ValueError(f"arc: train must list 1..{MAX_EXAMPLES} examples")
    pairs = [_pair(p, f"arc train.{i}") for i, p in enumerate(train)] + [_pair(test, "arc test")]
    mapping = _mapping(data.get("mapping")) if rule == "recolour" else None
    for i, (grid_in, grid_out) in enumerate(pairs):
        if apply_rule(rule, grid_in, mapping) != grid_out:
            raise ValueError(f"arc: rule {rule} does not map {'the test' if i == len(train) else f'example {i}'} "
                             "input to its output")
    return {"output": pairs[-1][1]}


def _pair(value: Any, name: str) -> tuple[Grid, Grid]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object with input and output grids")
    return check_grid(value.get("input"), f"{name}.input"), check_grid(value.get("output"), f"{name}.output")


def _mapping(value: Any) -> dict[int, int]:
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 and
                                              all(type(c) is int and 0 <= c <= 9 for c in p) for p in value):
        raise ValueError(f"arc: mapping must be a list of [from, to] colour pairs, got {value!r}")
    out = dict((a, b) for a, b in value)
    if len(out) != len(value):
        raise ValueError(f"arc: mapping {value} maps a colour twice")
    return out


def score(ref: dict, response: str) -> Verdict:
    grid, reason = final_grid(response, MAX_CHARS)
    if grid is None:
        return zero(reason)
    return CORRECT if grid == ref["output"] else zero(WRONG)


def fitting_outputs(train: Sequence[tuple[Grid, Grid]], test_input: Grid) -> list[Grid | None]:
    """The test output of every rule of the family that fits all `train` pairs; None for a recolouring that fits
    but leaves a colour of the test input unknown."""
    out: list[Grid | None] = [fn(test_input) for fn in GEOMETRIC.values() if all(fn(a) == b for a, b in train)]
    mapping: dict[int, int] = {}
    for a, b in train:
        if len(a) != len(b) or len(a[0]) != len(b[0]):
            return out
        for row_a, row_b in zip(a, b):
            for ca, cb in zip(row_a, row_b):
                if mapping.setdefault(ca, cb) != cb:
                    return out
    known = all(c in mapping for row in test_input for c in row)
    out.append(apply_rule("recolour", test_input, mapping) if known else None)
    return out


def generate(rng: random.Random, *, rule: str | None = None, examples: int = 2, min_side: int = 2,
             max_side: int = 4, colours: int = 3) -> dict:
    """A puzzle of `examples` example pairs and a test pair under `rule` (random when None), on grids of
    `min_side`..`max_side` rows and columns over `colours` colours, redrawn until `fitting_outputs` agrees."""
    if rule is not None and rule not in RULES:
        raise ValueError(f"arc: rule must be one of {RULES}, got {rule!r}")
    if not 1 <= examples <= MAX_EXAMPLES or not 1 <= min_side <= max_side <= 30 or not 2 <= colours <= 10:
        raise ValueError("arc: need 1 <= examples <= 10, 1 <= min_side <= max_side <= 30, 2 <= colours <= 10")
    for _ in range(10_000):
        chosen = rule or rng.choice(RULES)
        palette = rng.sample(range(10), colours)
        mapping = None
        if chosen == "recolour":
            image = palette[:]
            while image == palette:
                rng.shuffle(image)
            mapping = dict(zip(palette, image))
        grids = []
        for _ in range(examples + 1):
            height, width = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
            grids.append([[rng.choice(palette) for _ in range(width)] for _ in range(height)])
        pairs = [(g, apply_rule(chosen, g, mapping)) for g in grids]
        want = pairs[-1][1]
        if all(o == want for o in fitting_outputs(pairs[:-1], pairs[-1][0])) and want != pairs[-1][0]:
            data = {"task": TASK, "rule": chosen, "train": [{"input": a, "output": b} for a, b in pairs[:-1]],
                    "test": {"input": pairs[-1][0], "output": want}}
            if mapping is not None:
                data["mapping"] = sorted([a, b] for a, b in mapping.items())
            return data
    raise ValueError(f"arc: no unambiguous puzzle found for rule={rule}")


def prompt_text(data: Mapping[str, Any]) -> str:
    shown = "".join(f"Example {i + 1} input:\n{grid_text(p['input'])}\noutput:\n{grid_text(p['output'])}\n"
                    for i, p in enumerate(data["train"]))
    return ("Each input grid becomes its output grid by the same rule.\n" + shown +
            f"Test input:\n{grid_text(data['test']['input'])}\n"
            "End with the test output grid, one row per line, digits separated by spaces, in a block:\n"
            "```answer\n...\n```\n")


def record(rng: random.Random, **options: Any) -> PromptRecord:
    data = generate(rng, **options)
    return make_record(data, prompt_text(data))


def reference_answer(data: Mapping[str, Any]) -> str:
    """The final answer a solver of this family reads off the examples alone (not the stored rule or output)."""
    train = [(p["input"], p["output"]) for p in data["train"]]
    outputs = fitting_outputs(train, data["test"]["input"])
    if not outputs or any(o is None or o != outputs[0] for o in outputs):
        raise ValueError("arc: the examples do not determine the test output")
    return answer_block(grid_text(outputs[0]))
