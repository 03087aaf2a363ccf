"""Route each record to the reward function of its domain: math and science by answer verification, code by tests."""

from __future__ import annotations

from collections.abc import Mapping

from ringjax.data import PromptRecord
from rollout.rewards.base import RewardFn, Verdict
from rollout.rewards.code import code_reward
from rollout.rewards.logic import logic_reward
from rollout.rewards.math import math_reward

DEFAULT_ROUTES: dict[str, RewardFn] = {"math": math_reward, "science": math_reward, "code": code_reward,
                                       "logic": logic_reward}


class UnknownDomain(KeyError):
    """A record's domain has no reward function."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class RewardRouter:
    """A reward function that dispatches on `record.domain` (`routes` defaults to `DEFAULT_ROUTES`)."""

    def __init__(self, routes: Mapping[str, RewardFn] | None = None):
        self.routes = dict(DEFAULT_ROUTES if routes is None else routes)

    def __call__(self, record: PromptRecord, response: str) -> float | Verdict:
        fn = self.routes.get(record.domain)
        if fn is None:
            raise UnknownDomain(f"no reward function for domain {record.domain!r} (prompt {record.id}); "
                                f"known domains: {sorted(self.routes)}")
        return fn(record, response)
