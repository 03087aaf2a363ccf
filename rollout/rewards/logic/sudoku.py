"""Sudoku, 4x4 (2x2 boxes) and 9x9 (3x3 boxes): the answer must be a complete valid grid keeping every given.

Record: {"task": "sudoku", "size": 4, "givens": [[1, 0, 3, 0], ...]} (0: blank). The generator's puzzles have a
unique solution (checked by the solver), but the verifier needs none: any complete valid grid that keeps the
givens scores 1.

Final answer: the last fenced block opened by "```answer", one row per line, digits separated by spaces
("1 2 3 4") or written together ("1234"); at most `MAX_CHARS` characters.

Reasons: "no_answer"; "malformed_answer" (not a grid of digits); "wrong" (another shape, a digit out of 1..size,
a repeat in a row, column or box, or a given changed).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from ringjax.data import PromptRecord
from rollout.rewards.base import Verdict
from rollout.rewards.logic.common import (CORRECT, WRONG, Grid, answer_block, check_grid, final_grid,
                                          grid_text, make_record, zero)

TASK = "sudoku"
BOX = {4: 2, 9: 3}  # grid size -> box side
MAX_CHARS = 400


def read_reference(data: Mapping[str, Any]) -> dict:
    size = data.get("size")
    if type(size) is not int or size not in BOX:
        raise ValueError(f"sudoku: size must be 4 or 9, got {size!r}")
    givens = check_grid(data.get("givens"), "sudoku givens", max_value=size)
    if len(givens) != size or len(givens[0]) != size:
        raise ValueError(f"sudoku: givens must be {size}x{size}")
    for unit in _units(size):
        values = [givens[r][c] for r, c in unit if givens[r][c]]
        if len(values) != len(set(values)):
            raise ValueError(f"sudoku: the givens repeat a digit in cells {unit}")
    return {"size": size, "givens": givens}


def score(ref: dict, response: str) -> Verdict:
    grid, reason = final_grid(response, MAX_CHARS)
    if grid is None:
        return zero(reason)
    return CORRECT if is_solution(grid, ref["givens"], ref["size"]) else zero(WRONG)


def is_solution(grid: Grid, givens: Grid, size: int) -> bool:
    """`grid` is a complete valid `size` sudoku keeping every non-zero given."""
    if len(grid) != size or any(len(row) != size for row in grid):
        return False
    full = set(range(1, size + 1))
    if any({grid[r][c] for r, c in unit} != full for unit in _units(size)):
        return False
    return all(g in (0, v) for grow, row in zip(givens, grid) for g, v in zip(grow, row))


def _units(size: int) -> list[list[tuple[int, int]]]:
    """Rows, columns and boxes as lists of (row, column) cells."""
    b = BOX[size]
    rows = [[(r, c) for c in range(size)] for r in range(size)]
    cols = [[(r, c) for r in range(size)] for c in range(size)]
    boxes = [[(br + r, bc + c) for r in range(b) for c in range(b)]
             for br in range(0, size, b) for bc in range(0, size, b)]
    return rows + cols + boxes


def solutions(givens: Grid, size: int, limit: int = 2) -> list[Grid]:
    """Up to `limit` solutions of a puzzle (backtracking on the cell with the fewest candidates)."""
    b, full = BOX[size], (1 << (size + 1)) - 2
    grid = [list(row) for row in givens]
    rows, cols, boxes = [0] * size, [0] * size, [0] * size
    for r in range(size):
        for c in range(size):
            if grid[r][c]:
                bit = 1 << grid[r][c]
                rows[r] |= bit
                cols[c] |= bit
                boxes[r // b * b + c // b] |= bit
    found: list[Grid] = []

    def search() -> None:
        best, best_free = None, 0
        for r in range(size):
            for c in range(size):
                if grid[r][c] == 0:
                    free = full & ~(rows[r] | cols[c] | boxes[r // b * b + c // b])
                    if best is None or free.bit_count() < best_free.bit_count():
                        best, best_free = (r, c), free
        if best is None:
            found.append([list(row) for row in grid])
            return
        r, c = best
        k = r // b * b + c // b
        for v in range(1, size + 1):
            bit = 1 << v
            if best_free & bit and len(found) < limit:
                grid[r][c] = v
                rows[r] |= bit
                cols[c] |= bit
                boxes[k] |= bit
                search()
                grid[r][c] = 0
                rows[r] &= ~bit
                cols[c] &= ~bit
                boxes[k] &= ~bit

    search()
    return found


def generate(rng: random.Random, *, size: int = 4, min_givens: int | None = None) -> dict:
    """A puzzle with exactly one solution: a shuffled complete grid, then blanks made in random order while the
    solution stays unique, down to `min_givens` givens (default 4 for 4x4, 30 for 9x9; fewer are possible but
    slower to generate)."""
    if size not in BOX:
        raise ValueError(f"sudoku: size must be 4 or 9, got {size}")
    b = BOX[size]
    min_givens = {4: 4, 9: 30}[size] if min_givens is None else min_givens
    digits = rng.sample(range(1, size + 1), size)
    row_order = [band * b + r for band in rng.sample(range(b), b) for r in rng.sample(range(b), b)]
    col_order = [stack * b + c for stack in rng.sample(range(b), b) for c in rng.sample(range(b), b)]
    solution = [[digits[(b * (r % b) + r // b + c) % size] for c in col_order] for r in row_order]
    givens = [list(row) for row in solution]
    filled = size * size
    for cell in rng.sample(range(size * size), size * size):
        if filled <= min_givens:
            break
        r, c = divmod(cell, size)
        givens[r][c] = 0
        if len(solutions(givens, size)) == 1:
            filled -= 1
        else:
            givens[r][c] = solution[r][c]
    return {"task": TASK, "size": size, "givens": givens}


def prompt_text(data: Mapping[str, Any]) -> str:
    size, b = data["size"], BOX[data["size"]]
    shown = "\n".join(" ".join(str(v) if v else "." for v in row) for row in data["givens"])
    return (f"Solve this {size}x{size} sudoku: every row, column and {b}x{b} box holds 1-{size} once; . is blank.\n"
            f"{shown}\nEnd with the full grid, one row per line, digits separated by spaces, in a block:\n"
            "```answer\n...\n```\n")


def record(rng: random.Random, **options: Any) -> PromptRecord:
    data = generate(rng, **options)
    return make_record(data, prompt_text(data))


def reference_answer(data: Mapping[str, Any]) -> str:
    found = solutions(data["givens"], data["size"], limit=1)
    if not found:
        raise ValueError("sudoku: the puzzle has no solution")
    return answer_block(grid_text(found[0]))
