"""Rewards behind one interface, `(PromptRecord, response text) -> float | Verdict`, scored off the training path.

- `math_reward` (math, science): the last \\boxed{} answer verified against `record.answer` with Math-Verify;
- `code_reward` (code): the response's program run against `record.tests` in the bubblewrap sandbox
  (`rollout.sandbox`), every verdict decided outside it; 1.0 only if every test passes;
- `logic_reward` (logic): puzzles (countdown / 24 game, Sudoku, Knights and Knaves, ARC-style grids, zebra) with a
  strict parser of the final answer and exact verification against the JSON reference in `record.answer`;
- `RewardRouter`: dispatch on `record.domain`;
- `RewardPool`: parallel scoring in worker threads with a per-call timeout that kills the call's sandboxes;
  failures score 0 and are counted, with the reasons reward functions give.
"""

from rollout.rewards.base import RewardFn, RewardResult, Verdict, as_text
from rollout.rewards.code import (CODE_LIMITS, CallCase, IOCase, Unencodable, code_reward, extract_program, parse_tests,
                                  same_output)
from rollout.rewards.logic import logic_reward
from rollout.rewards.math import last_boxed, math_reward, parse_answer
from rollout.rewards.pool import RewardPool
from rollout.rewards.router import DEFAULT_ROUTES, RewardRouter, UnknownDomain

__all__ = ["CODE_LIMITS", "DEFAULT_ROUTES", "CallCase", "IOCase", "RewardFn", "RewardPool", "RewardResult",
           "RewardRouter", "Unencodable", "UnknownDomain", "Verdict", "as_text", "code_reward", "extract_program",
           "last_boxed", "logic_reward", "math_reward", "parse_answer", "parse_tests", "same_output"]
