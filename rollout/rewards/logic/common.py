"""What every logic puzzle shares: its reference record, the final answer of a response, grids, and verdicts.

A puzzle's `PromptRecord.answer` is a JSON object whose "task" key names its verifier, with the data that verifier
needs (`make_record` writes it). A response's final answer is either the LAST `\\boxed{...}` (`final_boxed`) or the
LAST fenced block opened by a line "```answer" (`final_block`); each puzzle uses exactly one of the two. Only
the last one counts: when it is unclosed or longer than the puzzle allows, the answer is malformed (no earlier
answer is taken instead, so hedging never pays). Every scan is linear in the response and bounded by the
puzzle's answer size.

Reasons a response scores 0 (`Verdict.reason`): "no_answer" (no final answer), "malformed_answer" (a final answer
that does not parse, is oversized or is hostile), "wrong" (parsed, but not a solution), plus the puzzles' own
("wrong_numbers" for countdown), and "bad_record" for a record that cannot be verified against.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ringjax.data import PromptRecord
from ringjax.data.records import prompt_id
from rollout.rewards.base import Verdict

DOMAIN = "logic"
NO_ANSWER, MALFORMED, WRONG, BAD_RECORD = "no_answer", "malformed_answer", "wrong", "bad_record"
CORRECT = Verdict(1.0)
MAX_GRID_SIDE = 30  # ARC's largest grids; also bounds what a grid answer may hold
_BOXED = re.compile(r"\\boxed\s*\{")
_FENCE = re.compile(r"```answer[ \t]*\r?\n")
_CELL = re.compile(r"[0-9]")
_DIGITS = re.compile(r"[0-9]+")

Grid = list[list[int]]


def zero(reason: str) -> Verdict:
    return Verdict(0.0, reason)


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = collections.deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


def final_boxed(text: str, max_chars: int) -> tuple[str | None, str | None]:
    """(content of the last `\\boxed{...}`, None), or (None, reason): "no_answer" when there is none or it is
    blank, "malformed_answer" when it is not closed within `max_chars` characters (braces balanced)."""
    last = _last_match(_BOXED, text)
    if last is None:
        return None, NO_ANSWER
    start, depth = last.end(), 1
    for i in range(start, min(len(text), start + max_chars + 1)):
        char = text[i]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                content = text[start:i]
                return (content, None) if content.strip() else (None, NO_ANSWER)
    return None, MALFORMED


def final_block(text: str, max_chars: int) -> tuple[str | None, str | None]:
    """(content of the last "```answer" block, None), or (None, reason): "no_answer" when there is none or it is
    blank, "malformed_answer" when its closing ``` does not come within `max_chars` characters."""
    last = _last_match(_FENCE, text)
    if last is None:
        return None, NO_ANSWER
    end = text.find("```", last.end(), last.end() + max_chars + 3)
    if end < 0:
        return None, MALFORMED
    content = text[last.end():end]
    return (content, None) if content.strip() else (None, NO_ANSWER)


def parse_grid(text: str, max_side: int = MAX_GRID_SIDE) -> Grid | None:
    """A rectangular grid of single-digit cells, one row per line, cells separated by spaces ("1 0 2") or written
    together ("102"); None when it is anything else (ragged, another character, a blank line inside, more than
    `max_side` rows or columns)."""
    lines = text.strip().splitlines()
    if not lines or len(lines) > max_side:
        return None
    grid = []
    for line in lines:
        cells = line.split()
        if len(cells) == 1 and _DIGITS.fullmatch(cells[0]):
            cells = list(cells[0])
        if not cells or len(cells) > max_side or not all(_CELL.fullmatch(c) for c in cells):
            return None
        grid.append([int(c) for c in cells])
    return grid if len({len(row) for row in grid}) == 1 else None


def final_grid(text: str, max_chars: int) -> tuple[Grid | None, str | None]:
    """(the last answer block read as a grid, None), or (None, reason): "no_answer" or "malformed_answer"."""
    block, reason = final_block(text, max_chars)
    if block is None:
        return None, reason
    grid = parse_grid(block)
    return (grid, None) if grid is not None else (None, MALFORMED)


def grid_text(grid: Sequence[Sequence[int]]) -> str:
    """Rows on lines, cells separated by spaces (how prompts show grids and how `parse_grid` reads them)."""
    return "\n".join(" ".join(str(c) for c in row) for row in grid)


def answer_block(body: str) -> str:
    return f"```answer\n{body}\n```"


def check_grid(value: Any, name: str, max_value: int = 9) -> Grid:
    """`value` as a rectangular grid of ints in 0..`max_value` of at most MAX_GRID_SIDE per side; ValueError
    naming `name` otherwise (a record's grids are checked with this)."""
    if not isinstance(value, list) or not value or len(value) > MAX_GRID_SIDE:
        raise ValueError(f"{name} must be a non-empty list of at most {MAX_GRID_SIDE} rows")
    width = len(value[0]) if isinstance(value[0], list) else -1
    for row in value:
        if not isinstance(row, list) or len(row) != width or not 0 < width <= MAX_GRID_SIDE:
            raise ValueError(f"{name} must be a rectangular grid of 1..{MAX_GRID_SIDE} columns")
        if not all(type(c) is int and 0 <= c <= max_value for c in row):
            raise ValueError(f"{name} cells must be ints in 0..{max_value}")
    return [list(row) for row in value]


def make_record(data: Mapping[str, Any], prompt: str) -> PromptRecord:
    """A logic `PromptRecord`: `prompt`, and `data` (with its "task" key) as the JSON reference answer."""
    if "task" not in data:
        raise ValueError(f"puzzle data {dict(data)} has no 'task' key")
    return PromptRecord(prompt_id(prompt), prompt, DOMAIN, answer=json.dumps(dict(data), separators=(",", ":")))
