"""Prompt rows: validation into `PromptRecord`s, and the skip counts a loader reports.

A row is a mapping with `prompt` (non-empty str, required), a reference `answer` (str) and/or code `tests`
(list, dict or str), `domain` (str; the loader's default when absent) and an optional `id` (str or int).
A null field counts as absent (Parquet fills missing values with nulls). A row with neither `answer` nor
`tests` is skipped: the recipes' rewards (docs/architecture.md, recipes) all need a reference to verify against.

Rows without an `id` get one derived from the prompt text, so the same prompt has the same id whatever
file or format it came from (pass-rate tables are keyed by it).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

Tests = list | dict | str


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One usable RL prompt."""

    id: str
    prompt: str
    domain: str
    answer: str | None = None
    tests: Tests | None = None


class BadRow(ValueError):
    """A row that cannot become a `PromptRecord`; `reason` is the short key it is counted under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class LoadStats:
    """What a loader read: rows seen and kept, and skipped rows counted per reason (for logging)."""

    files: list[str] = dataclasses.field(default_factory=list)
    rows: int = 0
    kept: int = 0
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def add(self, reason: str | None) -> None:
        """Count one row: kept when `reason` is None, else skipped under `reason`."""
        self.rows += 1
        if reason is None:
            self.kept += 1
        else:
            self.skipped[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable summary."""
        return {"files": list(self.files), "rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped)}


def prompt_id(prompt: str) -> str:
    """Stable id of a prompt text (first 16 hex digits of its SHA-1)."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


def _optional(row: Mapping, key: str, types: type | tuple[type, ...]) -> Any:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        raise BadRow(f"bad_type:{key}")
    return value


def parse_row(row: object, default_domain: str) -> PromptRecord:
    """Validate one decoded row; raise `BadRow` with the skip reason when it is unusable."""
    if not isinstance(row, Mapping):
        raise BadRow("not_object")
    prompt = _optional(row, "prompt", str)
    if prompt is None:
        raise BadRow("missing_prompt")
    if not prompt.strip():
        raise BadRow("empty_prompt")
    answer = _optional(row, "answer", str)
    tests = _optional(row, "tests", (list, dict, str))
    if answer is None and tests is None:
        raise BadRow("missing_answer_or_tests")
    domain = _optional(row, "domain", str) or default_domain
    row_id = _optional(row, "id", (str, int))
    return PromptRecord(id=prompt_id(prompt) if row_id is None else str(row_id), prompt=prompt, domain=domain,
                        answer=answer, tests=tests)
