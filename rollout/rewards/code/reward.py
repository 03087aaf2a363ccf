"""Code reward: 1.0 only if the program in the response passes every test; every verdict is decided outside the box.

The program is the last ```python (or ```py / ```python3) fenced block of the response, else the whole response.
It runs with the standard library only (`run_python`'s default), under `CODE_LIMITS`:
- each stdin/stdout case: one sandbox run of the program as a script with the case's input on stdin; it passes when
  it exits 0 and its stdout equals the expected output up to trailing whitespace on each line and trailing blank
  lines (compared here);
- all function-call cases (given as such, or converted from assert statements, `cases.py`): ONE sandbox run of the
  harness (`runner.py`), which runs the program as __main__ and sends back each call's return value as plain data
  (`plain.py`); the expected values never enter the sandbox and are compared here, with `plain.same_value`;
- raw assert source (statements that could not be converted): one run of the harness, which executes the asserts
  in its own interpreter (never the program's) against stubs of the program's functions.
Evaluation stops at the first failing case. The score comes as a `Verdict` whose `reason` says why it is 0:
"wrong" (ran, wrong answer), "error" (raised, exited non-zero or returned something that is not plain data),
"timeout", "output_limit", "cancelled", or "unencodable_expected" (the record's own arguments or expected values
are not plain data). A malformed `tests` field raises ValueError naming the record (the pool counts it).
"""

from __future__ import annotations

import functools
import marshal
import math
import os
import re

from ringjax.data import PromptRecord
from rollout.rewards.base import Verdict
from rollout.rewards.code import plain
from rollout.rewards.code.cases import WRAPPERS, CallCase, IOCase, Unencodable, parse_tests
from rollout.sandbox import Runner, SandboxLimits, SandboxResult, run_python

CODE_LIMITS = SandboxLimits(cpu_s=10, memory_mb=1024, file_mb=16, nproc=8, wall_s=20, output_bytes=1 << 20)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_HERE = os.path.dirname(os.path.abspath(__file__))
PASS = Verdict(1.0)


@functools.cache
def _runner_files() -> tuple[str, dict[str, str]]:
    with open(os.path.join(_HERE, "runner.py"), encoding="utf-8") as f, \
            open(os.path.join(_HERE, "plain.py"), encoding="utf-8") as g:
        return f.read(), {"plain.py": g.read()}


def extract_program(response: str) -> str:
    """The last ```python fenced block of `response`, else the whole response."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


def same_output(actual: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""
    def norm(s: str) -> list[str]:
        return [line.rstrip() for line in s.rstrip().splitlines()]

    return norm(actual) == norm(expected)


def _failure(res: SandboxResult) -> Verdict | None:
    if res.killed_reason == "wall_timeout" or res.killed_reason == "cpu_limit":
        return Verdict(0.0, "timeout")
    if res.killed_reason is not None:
        return Verdict(0.0, res.killed_reason)
    return None if res.returncode == 0 else Verdict(0.0, "error")


def check_io(program: str, case: IOCase, limits: SandboxLimits) -> Verdict:
    res = run_python(program, stdin=case.input, limits=limits)
    return _failure(res) or (PASS if same_output(res.stdout, case.output) else Verdict(0.0, "wrong"))


def check_calls(program: str, cases: list[CallCase], limits: SandboxLimits) -> Verdict:
    script, modules = _runner_files()
    job = marshal.dumps(("calls", [(c.call, tuple(c.args), dict(c.kwargs)) for c in cases]))
    res = run_python(program, limits=limits, runner=Runner(script, job, modules, args=("calls",)))
    answers = res.report.split(b"\n")
    for k, case in enumerate(cases):
        if k >= len(answers):  # the harness was stopped before it answered this call
            return _failure(res) or Verdict(0.0, "error")
        verdict = _judge(case, answers[k])
        if verdict.score == 0.0:
            return verdict
    return _failure(res) or PASS


def _judge(case: CallCase, line: bytes) -> Verdict:
    """A call's answer line: "v LITERAL" (its return value) or "e ..." (it failed)."""
    if not line.startswith(b"v "):
        return Verdict(0.0, "error")
    try:
        actual = plain.decode(line[2:])
    except plain.NotPlain:  # not plain data, or a line the program process forged
        return Verdict(0.0, "error")
    return PASS if _matches(case, actual) else Verdict(0.0, "wrong")


def _matches(case: CallCase, actual: object) -> bool:
    if case.check == "truthy" or case.check == "falsy":
        return bool(actual) == (case.check == "truthy")  # plain data only: bool() runs no program code
    if case.check == "close":
        return (type(actual) in (int, float) and math.isclose(actual, case.expected, rel_tol=case.rel_tol,
                                                               abs_tol=case.abs_tol))
    if case.wrapper is not None:
        try:
            actual = WRAPPERS[case.wrapper](actual)
        except TypeError:  # not iterable, unhashable items, unorderable items
            return False
    return plain.same_value(actual, case.expected, json_like=case.json_like)


def check_asserts(program: str, source: str, limits: SandboxLimits) -> Verdict:
    script, modules = _runner_files()
    job = marshal.dumps(("asserts", source))
    res = run_python(program, limits=limits, runner=Runner(script, job, modules, args=("asserts",)))
    return _failure(res) or (PASS if res.report == b"passed\n" else Verdict(0.0, "wrong"))


def code_reward(record: PromptRecord, response: str, limits: SandboxLimits = CODE_LIMITS) -> Verdict:
    """Verdict(1.0) iff the program extracted from `response` passes every test of `record.tests`."""
    if record.tests is None:
        raise ValueError(f"prompt {record.id} (domain {record.domain!r}) has no tests to run the program against")
    try:
        tests = parse_tests(record.tests, record.id)
    except Unencodable:
        return Verdict(0.0, "unencodable_expected")
    program = extract_program(response)
    for case in tests.io:
        verdict = check_io(program, case, limits)
        if verdict.score == 0.0:
            return verdict
    if tests.calls:
        verdict = check_calls(program, tests.calls, limits)
        if verdict.score == 0.0:
            return verdict
    return check_asserts(program, tests.asserts, limits) if tests.asserts else PASS
