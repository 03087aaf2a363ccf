"""The code reward: programs run in the sandbox, verdicts decided outside it.

- `cases`: a record's tests parsed into stdin/stdout and function-call cases (asserts converted where they can be);
- `plain`: the strict encoding of values that cross the sandbox's boundary and the comparison rules;
- `runner.py`: the harness that runs inside the sandbox (a file shipped into it, not imported here);
- `reward`: `code_reward`, which runs them and judges.
"""

from rollout.rewards.code.cases import CallCase, IOCase, Tests, Unencodable, convert_asserts, parse_tests
from rollout.rewards.code.reward import CODE_LIMITS, code_reward, extract_program, same_output

__all__ = ["CODE_LIMITS", "CallCase", "IOCase", "Tests", "Unencodable", "code_reward", "convert_asserts",
           "extract_program", "parse_tests", "same_output"]
