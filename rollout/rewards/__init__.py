"""Rewards behind one interface, `(PromptRecord, response text) -> float`, scored off the training path.

- `math_reward` (math, science): the last \\boxed{} answer verified against `record.answer` with Math-Verify;
- `code_reward` (code): the response's program run against `record.tests` in the bubblewrap sandbox
  (`rollout.sandbox`); 1.0 only if every test passes;
- `RewardRouter`: dispatch on `record.domain`;
- `RewardPool`: parallel scoring in worker threads with a per-call timeout; failures score 0 and are counted.
"""

from rollout.rewards.base import RewardFn, RewardResult, as_text
from rollout.rewards.code import CODE_LIMITS, IOCase, code_reward, extract_program, parse_tests, same_output
from rollout.rewards.math import last_boxed, math_reward, parse_answer
from rollout.rewards.pool import RewardPool
from rollout.rewards.router import DEFAULT_ROUTES, RewardRouter, UnknownDomain

__all__ = ["CODE_LIMITS", "DEFAULT_ROUTES", "IOCase", "RewardFn", "RewardPool", "RewardResult", "RewardRouter",
           "UnknownDomain", "as_text", "code_reward", "extract_program", "last_boxed", "math_reward", "parse_answer",
           "parse_tests", "same_output"]
