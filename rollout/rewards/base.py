"""The reward interface: a reward function maps (prompt record, response text) to a score.

Rewards here are binary (docs/architecture.md, recipes): 1.0 when the response is verified correct against the record's
reference (`answer` for math, science and logic, `tests` for code), else 0.0. A function returns a float, or a
`Verdict` whose `reason` says why a response scored 0 ("no_answer", "wrong", "unencodable_expected", ...);
`RewardPool` counts those reasons. Functions may raise on a malformed record; `RewardPool` turns any exception
into a 0 score and counts it, so a single bad row never stops a run.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from ringjax.data import PromptRecord


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A reward function's score with the reason it is 0 (a short key `RewardPool` counts); None when scored 1."""

    score: float
    reason: str | None = None


RewardFn = Callable[[PromptRecord, str], "float | Verdict"]
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass(frozen=True)
class RewardResult:
    """The score of one response; `error` says why it is 0 when the reward function failed or timed out."""

    score: float
    error: str | None = None
    reason: str | None = None  # the reward function's `Verdict.reason` (or "error" / "timeout")


def as_text(response: str | bytes) -> tuple[str, bool]:
    """(valid UTF-8 text, whether it had to be repaired): bytes are decoded with errors="replace", and a str
    holding lone surrogates (e.g. from errors="surrogateescape") gets each replaced by U+FFFD."""
    if isinstance(response, bytes | bytearray):
        try:
            return bytes(response).decode("utf-8"), False
        except UnicodeDecodeError:
            return bytes(response).decode("utf-8", "replace"), True
    if not isinstance(response, str):
        raise TypeError(f"a response must be str or bytes, got {type(response).__name__}")
    try:
        response.encode("utf-8")
        return response, False
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", response), True
