"""Code reward: 1.0 only if the program in the response passes every test, each run in the bubblewrap sandbox.

The program is the last ```python (or ```py / ```python3) fenced block of the response, else the whole response.
It runs with the standard library only (`run_python`'s default), each test under `CODE_LIMITS`.

Test format (`PromptRecord.tests`):
- a list whose items are `{"input": str, "output": str}` stdin/stdout pairs and/or strings of Python `assert`
  statements;
- a dict `{"inputs": [str, ...], "outputs": [str, ...]}` of stdin/stdout pairs (the APPS / TACO layout);
- a string of Python `assert` statements.
A stdin/stdout pair runs the program once with `input` on stdin and passes when stdout equals `output` up to
trailing whitespace on each line and trailing blank lines. All assert statements run in ONE sandbox run, after the
program, in its namespace (`__name__ == "__main__"`, as if appended to it). They pass only if the harness then
prints a random token it read from stdin before running the program: a program that calls `sys.exit(0)` or
`os._exit(0)` before the asserts run does not pass. (A program set on forging the token in-process could; the
sandbox bounds what it can do, not what it can claim.) Evaluation stops at the first failing test.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Mapping

from ringjax.data import PromptRecord
from rollout.sandbox import SandboxLimits, run_python

CODE_LIMITS = SandboxLimits(cpu_s=10, memory_mb=1024, file_mb=16, nproc=32, wall_s=20, output_bytes=1 << 20)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_HARNESS = """\
import sys
_token = sys.stdin.readline().strip()
_ns = {"__name__": "__main__", "__builtins__": __builtins__}
with open("solution.py") as _f:
    exec(compile(_f.read(), "solution.py", "exec"), _ns)
with open("tests.py") as _f:
    exec(compile(_f.read(), "tests.py", "exec"), _ns)
sys.stdout.write("\\n" + _token + "\\n")
"""


@dataclasses.dataclass(frozen=True)
class IOCase:
    input: str
    output: str


def extract_program(response: str) -> str:
    """The last ```python fenced block of `response`, else the whole response."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


def parse_tests(tests: object, record_id: str = "?") -> tuple[list[IOCase], str]:
    """(stdin/stdout cases, assert source) of a record's `tests`; ValueError naming the record when malformed."""
    where = f"prompt {record_id}: tests"
    if isinstance(tests, str):
        cases, asserts = [], [tests]
    elif isinstance(tests, Mapping):
        if set(tests) != {"inputs", "outputs"}:
            raise ValueError(f"{where} dict must have exactly the keys 'inputs' and 'outputs', got {sorted(tests)}")
        ins, outs = tests["inputs"], tests["outputs"]
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
            raise ValueError(f"{where}: 'inputs' and 'outputs' must be lists of equal length")
        cases, asserts = [_io_case({"input": i, "output": o}, where) for i, o in zip(ins, outs)], []
    elif isinstance(tests, list):
        cases = [_io_case(t, f"{where}[{k}]") for k, t in enumerate(tests) if not isinstance(t, str)]
        asserts = [t for t in tests if isinstance(t, str)]
    else:
        raise ValueError(f"{where} must be a list, dict or str, got {type(tests).__name__}")
    source = "\n".join(a for a in asserts if a.strip())
    if not cases and not source:
        raise ValueError(f"{where} is empty: nothing to verify the program against")
    return cases, source


def _io_case(item: object, where: str) -> IOCase:
    if not isinstance(item, Mapping) or set(item) != {"input", "output"}:
        raise ValueError(f"{where} must be an assert string or {{'input': str, 'output': str}}, got {item!r:.200}")
    if not isinstance(item["input"], str) or not isinstance(item["output"], str):
        raise ValueError(f"{where}: 'input' and 'output' must be strings")
    return IOCase(item["input"], item["output"])


def same_output(actual: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""
    def norm(s: str) -> list[str]:
        return [line.rstrip() for line in s.rstrip().splitlines()]

    return norm(actual) == norm(expected)


def passes_io(program: str, case: IOCase, limits: SandboxLimits) -> bool:
    res = run_python(program, stdin=case.input, limits=limits)
    return res.ok and same_output(res.stdout, case.output)


def passes_asserts(program: str, asserts: str, limits: SandboxLimits) -> bool:
    token = secrets.token_hex(16)
    res = run_python(_HARNESS, stdin=token + "\n", limits=limits,
                     files={"solution.py": program, "tests.py": asserts})
    return res.ok and res.stdout.rstrip("\n").rsplit("\n", 1)[-1] == token


def code_reward(record: PromptRecord, response: str, limits: SandboxLimits = CODE_LIMITS) -> float:
    """1.0 iff the program extracted from `response` passes every test of `record.tests`."""
    if record.tests is None:
        raise ValueError(f"prompt {record.id} (domain {record.domain!r}) has no tests to run the program against")
    cases, asserts = parse_tests(record.tests, record.id)
    program = extract_program(response)
    if not all(passes_io(program, case, limits) for case in cases):
        return 0.0
    return 1.0 if not asserts or passes_asserts(program, asserts, limits) else 0.0
