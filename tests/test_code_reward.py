"""The code reward's verdicts outside the sandbox: the plain-data encoding and its comparison rules, assert
statements converted to call cases, call cases judged on the grader's side, raw asserts run by the harness in its
own interpreter, the reasons of zero scores, and a timed-out reward that stops its sandboxes (real bwrap)."""

import math
import os
import subprocess
import sys
import time

import pytest

from ringjax.data import PromptRecord
from rollout.rewards import RewardPool, Verdict, code_reward, parse_tests
from rollout.rewards.code import CallCase, Unencodable, convert_asserts
from rollout.rewards.code.plain import NotPlain, decode, encode, same_value
from rollout.sandbox import CancelScope, SandboxLimits

LIMITS = SandboxLimits(cpu_s=2, memory_mb=256, nproc=4, wall_s=5)
CALLS = [{"call": "f", "args": [2], "expected": 4}, {"call": "f", "args": [-3], "expected": 9}]


def reward(tests, program: str, limits: SandboxLimits = LIMITS) -> Verdict:
    return code_reward(PromptRecord("t", "q", "code", tests=tests), f"```python\n{program}\n```", limits=limits)


# ---------------------------------------------------------------------------------------------- plain data


@pytest.mark.parametrize("value", [None, True, 0, -7, 10 ** 40, 1.5, math.inf, "é\n", [], [1, [2, "x"]], (1, (2,)),
                                   {"a": [1], 2: None, (1, 2): {}}, {1, "x", (2, 3)}, frozenset({1})])
def test_plain_values_round_trip_exactly(value):
    back = decode(encode(value))
    assert back == value and type(back) is (set if type(value) is frozenset else type(value))


class Liar(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class Anything:
    def __eq__(self, other):
        return True

    def __hash__(self):
        return 0


@pytest.mark.parametrize("value", [Liar(3), Anything(), [1, Anything()], {"k": Liar(1)}, {Anything()}, b"bytes", 1j,
                                   range(3), type("S", (str,), {})("s"), print])
def test_plain_refuses_everything_else(value):
    with pytest.raises(NotPlain):
        encode(value)


def test_plain_bounds_depth_and_decodes_strictly():
    deep = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(NotPlain, match="deeper"):
        encode(deep)
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(NotPlain):
        encode(cyclic)
    for text in ["f(1)", "__import__('os')", "x", "[1, *y]", "{**a}", "{[1]: 2}", "{[1]}", "1 + 2", "--1", "-'a'",
                 "b'x'", "1j", "...", "lambda: 1", "(x := 1)", "set([1])", "[" * 70 + "]" * 70, "1" * 5000,
                 "[" * 100000, "not a literal", b"\xff"]:
        with pytest.raises(NotPlain):
            decode(text)
    assert decode("[-inf, inf, -0.5, 'x' 'y', set(), {}]") == [-math.inf, math.inf, -0.5, "xy", set(), {}]
    assert math.isnan(decode(encode(math.nan)))


def test_comparison_rules():
    assert same_value(True, True) and not same_value(1, True) and not same_value(True, 1)
    assert same_value(2, 2) and same_value(2.0, 2) and not same_value(2.5, 2) and not same_value("2", 2)
    assert same_value(0.1 + 0.2, 0.3) and same_value(3, 3.0) and not same_value(3.001, 3.0)
    assert not same_value(math.nan, math.nan) and same_value(math.inf, math.inf)
    assert same_value([1, (2, 3)], [1, (2, 3)]) and not same_value([1, [2, 3]], [1, (2, 3)])
    assert same_value((1, 2), [1, 2], json_like=True) and not same_value((1, 2), [1, 2])
    assert same_value({"a": 1.0}, {"a": 1}) and not same_value({"a": 1, "b": 2}, {"a": 1})
    assert same_value({1, 2}, {2, 1}) and not same_value([1, 2], {1, 2}) and not same_value(None, 0)


# ---------------------------------------------------------------------------------------------- parsing


def test_assert_shapes_become_call_cases():
    source = ("import math\nassert f(1) == 2\nassert [1, 2] == f(2, k='x'), 'msg'\n"
              "assert sorted(f(3)) == sorted([3, 1])\nassert f(4)\nassert not f(5)\nassert f(6) is None\n"
              "assert math.isclose(f(7), 0.5, rel_tol=1e-3)\n"
              "assert abs(f(8) - 2.5) < 1e-6\n")
    cases = convert_asserts(source)
    assert [(c.call, c.args, c.kwargs, c.check, c.wrapper) for c in cases] == [
        ("f", (1,), {}, "eq", None), ("f", (2,), {"k": "x"}, "eq", None), ("f", (3,), {}, "eq", "sorted"),
        ("f", (4,), {}, "truthy", None), ("f", (5,), {}, "falsy", None), ("f", (6,), {}, "eq", None),
        ("f", (7,), {}, "close", None), ("f", (8,), {}, "close", None)]
    assert cases[2].expected == [1, 3] and cases[6].rel_tol == 1e-3 and cases[7].abs_tol == 1e-6
    humaneval = "METADATA = {}\n\ndef check(candidate):\n    '''doc'''\n    assert candidate(2) == 4\n\ncheck(square)\n"
    assert convert_asserts(humaneval) == [CallCase("square", (2,), {}, 4)]


@pytest.mark.parametrize("source", ["for x in range(3):\n    assert f(x) == x", "assert f(1) == g(1)",
                                    "x = 1\nassert f(x) == 1", "assert f(1) != 2", "assert obj.f(1) == 2",
                                    "assert len(f(1)) == 2", "assert f(*[1]) == 1", "assert f(1) == 1 +",
                                    "def check(c):\n    assert c(1) == 1\n"])
def test_other_shapes_stay_raw(source):
    assert convert_asserts(source) is None


def test_formats_and_bad_values():
    apps = parse_tests({"fn_name": "f", "inputs": [[1, 2], [3, 4]], "outputs": [3, 7]}, "r")
    assert [(c.call, c.args, c.expected, c.json_like) for c in apps.calls] == [("f", (1, 2), 3, True),
                                                                               ("f", (3, 4), 7, True)]
    mixed = parse_tests([{"input": "1", "output": "1"}, {"call": "g", "args": [], "expected": None},
                         "assert g() is None"], "r")
    assert len(mixed.io) == 1 and len(mixed.calls) == 2 and mixed.asserts == ""
    with pytest.raises(Unencodable, match="expected value"):
        parse_tests("assert f(1) == b'x'", "r")
    with pytest.raises(ValueError, match="prompt r: tests\\[0\\].*'call'"):
        parse_tests([{"call": "not an identifier", "expected": 1}], "r")
    with pytest.raises(ValueError, match="fn_name"):
        parse_tests({"fn_name": 3, "inputs": [], "outputs": []}, "r")
    assert reward("assert f(1) == 1j", "def f(x):\n    return 1j") == Verdict(0.0, "unencodable_expected")


# ---------------------------------------------------------------------------------------------- judging


def test_call_cases_are_judged_outside():
    assert reward(CALLS, "def f(x):\n    return x * x") == Verdict(1.0)
    assert reward(CALLS, "def f(x):\n    return 2 * x") == Verdict(0.0, "wrong")
    assert reward(CALLS, "def f(x):\n    return float(x * x)") == Verdict(1.0)  # 4.0 == 4, as Python has it
    assert reward(CALLS, "def f(x):\n    return str(x * x)") == Verdict(0.0, "wrong")
    assert reward(CALLS, "def f(x):\n    raise ValueError") == Verdict(0.0, "error")
    assert reward(CALLS, "def g(x):\n    return x * x") == Verdict(0.0, "error")  # no f
    assert reward(CALLS, "import sys\ndef f(x):\n    return x * x\nsys.exit(3)") == Verdict(0.0, "error")
    tuples = [{"call": "pair", "args": [1], "expected": [1, 2]}]  # from JSON: a tuple answers a list
    assert reward(tuples, "def pair(x):\n    return (x, x + 1)") == Verdict(1.0)
    assert reward("assert pair(1) == (1, 2)", "def pair(x):\n    return [x, x + 1]") == Verdict(0.0, "wrong")


def test_programs_run_as_normal_scripts():
    program = ("import os, sys\nNAME = os.path.basename(__file__)\ndef f(x):\n    return x * x if NAME == 'main.py' "
               "and sys.argv[0] == __file__ else 0\nif __name__ == '__main__':\n    print('started')\n")
    assert reward(CALLS, program) == Verdict(1.0)
    raw = "for x in (2, -3):\n    assert f(x) == x * x\n"
    assert reward(raw, program) == Verdict(1.0)


def test_raw_asserts_run_in_the_harness_interpreter():
    raw = "import math\nfor x in range(4):\n    assert f(x) == x * x, x\nassert math.pi > 3\n"
    assert reward(raw, "def f(x):\n    return x * x") == Verdict(1.0)
    assert reward(raw, "def f(x):\n    return x + x") == Verdict(0.0, "wrong")  # f(0), f(2) pass; f(1) fails
    always = ("class E:\n    def __eq__(self, o):\n        return True\n    __hash__ = object.__hash__\n"
              "def f(x):\n    return E()")
    assert reward(raw, always) == Verdict(0.0, "wrong")
    hijack = ("import builtins\nbuiltins.compile = lambda *a, **k: builtins.__dict__['__build_class__']\n"
              "builtins.AssertionError = type('A', (BaseException,), {})\ndef f(x):\n    return 0")
    assert reward(raw, hijack) == Verdict(0.0, "wrong")


def test_io_reasons():
    io = [{"input": "", "output": "1\n"}]
    assert reward(io, "print(1)") == Verdict(1.0)
    assert reward(io, "print(2)") == Verdict(0.0, "wrong")
    assert reward(io, "import time\ntime.sleep(30)", SandboxLimits(wall_s=1, memory_mb=256, nproc=4)) == \
        Verdict(0.0, "timeout")
    assert reward(io, "print('x' * (1 << 20))", SandboxLimits(output_bytes=1 << 10, memory_mb=256, nproc=4)) == \
        Verdict(0.0, "output_limit")


def test_a_timed_out_reward_kills_its_sandbox_and_starts_no_other():
    scopes = []
    slow = PromptRecord("slow", "q", "code", tests=[{"input": str(i), "output": "x"} for i in range(6)])

    def spy(record, response):
        scopes.append(CancelScope.current())
        return code_reward(record, response, limits=SandboxLimits(wall_s=30, memory_mb=256, nproc=4))

    with RewardPool(spy, workers=1, timeout_s=1.0) as pool:
        t0 = time.monotonic()
        [result] = pool.score([(slow, "import time\ntime.sleep(20)\nprint('x')")])
        assert result.reason == "timeout" and time.monotonic() - t0 < 5
        deadline = time.monotonic() + 5
        while pool.stats["abandoned"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.stats["abandoned"] == 0  # the call returned within moments, not after 6 x 20 s
        assert pool.stats["killed"] == 1 and scopes[0].started == 1 and scopes[0].cancelled
        ok = PromptRecord("ok", "q", "code", tests=CALLS)
        [good, bad] = pool.score([(ok, "def f(x):\n    return x * x"), (ok, "def f(x):\n    return x")])
        assert good.score == 1.0 and bad.reason == "wrong" and pool.reasons == {"wrong": 1}


def test_a_run_without_a_working_sandbox_stops_at_start_up(tmp_path):
    env = {**os.environ, "RINGJAX_BWRAP": str(tmp_path / "no-bwrap")}
    proc = subprocess.run([sys.executable, "-m", "ringjax.cli", "train", f"out={tmp_path / 'run'}", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"ringjax train: error: code prompts need the sandbox, which cannot run here: "
        f"RINGJAX_BWRAP={tmp_path}/no-bwrap is not an executable file"]
    assert not (tmp_path / "run" / "sft").exists()  # stopped before any compute
