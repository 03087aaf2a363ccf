"""Logic rewards (the third domain of the Ring-1T recipe, with math and code): verifiable puzzles scored exactly.

`logic_reward(record, response)` reads the JSON reference in `record.answer`, whose "task" key names the puzzle,
and scores the response's final answer with that puzzle's verifier, 1.0 or `Verdict(0.0, reason)`:

| task        | module      | final answer                                  |
|-------------|-------------|-----------------------------------------------|
| countdown   | `countdown` | last `\\boxed{EXPR}` (the 24 game: use_all)    |
| sudoku      | `sudoku`    | last "```answer" block, one grid row a line   |
| knights     | `knights`   | last `\\boxed{A=knight, B=knave}`              |
| arc         | `arc`       | last "```answer" block, one grid row a line   |
| zebra       | `zebra`     | last "```answer" block, "N: value, value"     |

Each module has a seeded generator (`record(random.Random(seed), ...)`) whose prompt states the answer format, a
reference solver (`reference_answer(data)`), `read_reference(data)` (the record's check) and `score(ref, text)`.
A record that cannot be verified against (no answer, bad JSON, an unknown task, inconsistent data) scores
`Verdict(0.0, "bad_record")` without raising (the pool counts the reason; what is wrong is logged once per
record); a response never makes the verifier raise. Records' references are
read once and cached (`reference`), as every prompt is scored `samples_per_prompt` times.
"""

from __future__ import annotations

import functools
import json
import logging
from types import ModuleType

from ringjax.data import PromptRecord
from rollout.rewards.base import Verdict
from rollout.rewards.logic import arc, countdown, knights, sudoku, zebra
from rollout.rewards.logic.common import BAD_RECORD, DOMAIN, MALFORMED, NO_ANSWER, WRONG, make_record, zero

logger = logging.getLogger(__name__)
_warned: set[str] = set()
PUZZLES: dict[str, ModuleType] = {m.TASK: m for m in (countdown, sudoku, knights, arc, zebra)}


@functools.lru_cache(maxsize=4096)
def reference(answer: str) -> tuple[ModuleType, dict]:
    """(puzzle module, checked reference) of a record's `answer` JSON; ValueError saying what is wrong."""
    try:
        data = json.loads(answer)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"the reference answer is not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("task"), str) or data["task"] not in PUZZLES:
        task = data.get("task") if isinstance(data, dict) else None
        raise ValueError(f"the reference's task {task!r} is not one of {sorted(PUZZLES)}")
    module = PUZZLES[data["task"]]
    return module, module.read_reference(data)


def logic_reward(record: PromptRecord, response: str) -> Verdict:
    """1.0 when the final answer of `response` solves the puzzle of `record`, else Verdict(0.0, reason)."""
    try:
        if not isinstance(record.answer, str):
            raise ValueError("no reference answer")
        module, ref = reference(record.answer)
    except (ValueError, TypeError) as e:
        if len(_warned) < 1000 and record.id not in _warned:  # said once per record, and boundedly
            _warned.add(record.id)
            logger.warning("logic reward: prompt %s has a bad reference: %s", record.id, e)
        return zero(BAD_RECORD)
    return module.score(ref, response)


__all__ = ["BAD_RECORD", "DOMAIN", "MALFORMED", "NO_ANSWER", "PUZZLES", "WRONG", "logic_reward", "make_record",
           "reference", "arc", "countdown", "knights", "sudoku", "zebra"]
