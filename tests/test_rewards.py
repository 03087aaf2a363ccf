"""Rewards: Math-Verify equivalence, code tests in the real sandbox, routing, and the parallel pool's failure paths."""

import concurrent.futures as cf
import threading
import time

import pytest

from ringjax.data import PromptRecord
from rollout.rewards import (RewardPool, RewardResult, RewardRouter, UnknownDomain, Verdict, as_text, code_reward,
                             extract_program, last_boxed, math_reward, parse_tests)
from rollout.sandbox import SandboxLimits

LIMITS = SandboxLimits(cpu_s=2, memory_mb=256, nproc=4, wall_s=5)
HALF = PromptRecord("half", "1/2 as a number?", "math", answer="1/2")
ADD_IO = PromptRecord("add", "read a b, print a+b", "code",
                      tests=[{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4", "output": "6"}])
SQUARE = PromptRecord("sq", "write f(x) = x*x", "code", tests="assert f(2) == 4\nassert f(-3) == 9")
ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)"


def fenced(program: str) -> str:
    return f"Here is my solution.\n```python\n{program}\n```\nDone."


def score(record: PromptRecord, response: str) -> float:
    return code_reward(record, response, limits=LIMITS).score


# ---------------------------------------------------------------------------------------------------- math


@pytest.mark.parametrize("gold,response", [
    ("1/2", r"so the answer is \boxed{0.5}"),
    ("1/2", r"\boxed{\frac{1}{2}}"),
    ("1/2", r"\boxed{\dfrac12}"),
    ("1/2", r"\boxed{2/4}"),
    ("0.5", r"\boxed{\frac{1}{2}}"),
    (r"\frac{1}{2}", r"\boxed{1/2}"),
    (r"\sqrt{2}", r"\boxed{\sqrt 2}"),
    ("x^2+1", r"\boxed{1 + x^2}"),
    ("3", r"first \boxed{7}, but on reflection \boxed{3}"),  # the LAST boxed answer counts
])
def test_math_equivalent_forms_score_1(gold, response):
    assert math_reward(PromptRecord("m", "q", "math", answer=gold), response) == 1.0


@pytest.mark.parametrize("response", [
    r"\boxed{0.6}",
    r"\boxed{2}",
    r"\boxed{1/2} is tempting, but the answer is \boxed{3}",  # the last boxed answer is wrong
    "The answer is 1/2.",  # right number, not boxed
    r"\boxed{}",
    "",
])
def test_math_wrong_or_unboxed_scores_0(response):
    assert math_reward(HALF, response) == 0.0


def test_last_boxed_balances_braces():
    assert last_boxed(r"\boxed{1} and \boxed{\frac{a}{b+\{c\}}}") == r"\frac{a}{b+\{c\}}"
    assert last_boxed(r"\boxed{2} then \boxed{3") == "2"  # an unclosed last box falls back to the one before
    assert last_boxed(r"\fbox{4}") == "4"
    assert last_boxed("no box") is None


def test_math_reward_runs_in_worker_threads():
    """Math-Verify's default SIGALRM timeouts raise outside the main thread; ours are disabled."""
    with cf.ThreadPoolExecutor(2) as ex:
        assert ex.submit(math_reward, HALF, r"\boxed{0.5}").result() == 1.0


def test_math_without_reference_is_an_error():
    with pytest.raises(ValueError, match="prompt q1 .*no reference answer"):
        math_reward(PromptRecord("q1", "q", "math", tests="assert True"), r"\boxed{1}")


# ---------------------------------------------------------------------------------------------------- code


def test_code_stdin_stdout_tests():
    assert score(ADD_IO, fenced(ADD_PROGRAM)) == 1.0
    assert score(ADD_IO, fenced(ADD_PROGRAM + "   \n\n")) == 1.0
    assert score(ADD_IO, fenced("print(5)")) == 0.0  # passes the first case only
    assert score(ADD_IO, fenced("import sys\nprint(5)\nsys.exit(1)")) == 0.0  # right output, rc 1
    io_dict = PromptRecord("d", "q", "code", tests={"inputs": ["1 2\n", "3 3\n"], "outputs": ["3\n", "6\n"]})
    assert score(io_dict, fenced(ADD_PROGRAM)) == 1.0
    assert score(io_dict, fenced("print(3)")) == 0.0


def test_code_assert_tests():
    assert score(SQUARE, fenced("def f(x):\n    return x * x")) == 1.0
    assert score(SQUARE, fenced("def f(x):\n    return 2 * x")) == 0.0  # f(-3) fails
    listed = PromptRecord("l", "q", "code", tests=["assert f(2) == 4", "assert f(5) == 25"])
    assert score(listed, fenced("def f(x):\n    return x ** 2")) == 1.0
    assert score(listed, fenced("def f(x):\n    return 4")) == 0.0


@pytest.mark.parametrize("escape", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "exit()"])
def test_code_exiting_before_the_asserts_fails(escape):
    assert score(SQUARE, fenced(f"def f(x):\n    return 0\n{escape}")) == 0.0


def test_extract_program():
    assert extract_program("```python\na = 1\n```\ntext\n```py\nb = 2\n```") == "b = 2\n"
    assert extract_program("```Python3\nc = 3\n```") == "c = 3\n"
    assert extract_program("print(1)") == "print(1)"  # no fence: the whole response
    assert extract_program("```\nprint(1)\n```") == "```\nprint(1)\n```"  # unlabelled fence: not python


def test_malformed_tests_name_the_record():
    with pytest.raises(ValueError, match="prompt c7: tests\\[0\\]"):
        parse_tests([{"in": "1", "out": "1"}], "c7")
    with pytest.raises(ValueError, match="prompt c7: tests dict .*'inputs' and 'outputs'"):
        parse_tests({"input": "1"}, "c7")
    with pytest.raises(ValueError, match="prompt c7: tests is empty"):
        parse_tests([], "c7")
    with pytest.raises(ValueError, match="no tests"):
        code_reward(PromptRecord("c8", "q", "code", answer="4"), "print(4)")


# ---------------------------------------------------------------------------------------------------- routing


def test_router_dispatches_on_domain():
    router = RewardRouter()
    assert router(HALF, r"\boxed{0.5}") == 1.0
    assert router(PromptRecord("s", "q", "science", answer="100"), r"\boxed{100}") == 1.0
    assert router(SQUARE, fenced("def f(x):\n    return x * x")) == Verdict(1.0)
    with pytest.raises(UnknownDomain, match="domain 'poetry' \\(prompt p1\\); known domains: \\['code'"):
        router(PromptRecord("p1", "q", "poetry", answer="x"), "x")
    custom = RewardRouter({"echo": lambda record, response: float(response == record.answer)})
    assert custom(PromptRecord("e", "q", "echo", answer="hi"), "hi") == 1.0


# ---------------------------------------------------------------------------------------------------- pool


def _fake(record: PromptRecord, response: str) -> float:
    """A reward fn whose behaviour the record id picks: raise, hang, sleep, or score len(response)."""
    if record.id == "raise":
        raise RuntimeError("broken checker")
    if record.id == "hang":
        RELEASE.wait(30)
    if record.id == "slow":
        time.sleep(0.2)
    if record.id == "nan":
        return float("nan")
    return float(len(response))


RELEASE = threading.Event()


def _rec(kind: str) -> PromptRecord:
    return PromptRecord(kind, "q", "math", answer="1")


def test_pool_raising_and_hanging_functions_score_0_and_are_counted():
    RELEASE.clear()
    pool = RewardPool(_fake, workers=2, timeout_s=0.5)
    try:
        items = [(_rec("ok"), "abc"), (_rec("raise"), "x"), (_rec("hang"), "x"), (_rec("nan"), "x"),
                 (_rec("hang"), "x"), (_rec("ok"), "abcd")]
        results = pool.score(items)
        assert results[0] == RewardResult(3.0) and results[5] == RewardResult(4.0)
        assert results[1].score == 0.0 and "RuntimeError: broken checker" in results[1].error
        assert results[2] == results[4] == RewardResult(0.0, "timeout after 0.5 s", reason="timeout")
        assert results[3].score == 0.0 and "nan" in results[3].error
        assert pool.stats == {"scored": 2, "errors": 2, "timeouts": 2, "invalid_utf8": 0, "abandoned": 2, "killed": 0}
        assert any("prompt raise: RuntimeError" in e for e in pool.errors)
        # both original workers are stuck, yet the pool serves at full width: 4 x 0.2 s on 2 workers
        t0 = time.monotonic()
        assert pool.score([(_rec("slow"), "xy")] * 4) == [RewardResult(2.0)] * 4
        assert time.monotonic() - t0 < 0.7
    finally:
        RELEASE.set()
    deadline = time.monotonic() + 5
    while pool.stats["abandoned"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.stats["abandoned"] == 0  # the stuck threads retired once released; their late results dropped
    assert pool.score([(_rec("ok"), "z")]) == [RewardResult(1.0)]
    pool.close()


def test_pool_invalid_utf8_is_decoded_and_counted():
    with RewardPool(_fake, workers=2, timeout_s=5) as pool:
        results = pool.score([(_rec("ok"), b"ab\xff\xfe"), (_rec("ok"), "héllo".encode()), (_rec("ok"), "a\udcff")])
        assert [r.score for r in results] == [4.0, 5.0, 2.0]  # 2 replacement chars; valid UTF-8 untouched
        assert pool.stats["invalid_utf8"] == 2 and pool.stats["scored"] == 3
    assert as_text(b"\xff") == ("\ufffd", True) and as_text("ok") == ("ok", False)


def test_pool_submit_does_not_block_and_scores_in_parallel():
    with RewardPool(_fake, workers=8, timeout_s=5) as pool:
        t0 = time.monotonic()
        futures = pool.submit([(_rec("slow"), "x" * i) for i in range(32)])
        assert time.monotonic() - t0 < 0.1 and not all(f.done() for f in futures)
        done, _ = cf.wait(futures, timeout=5)
        elapsed = time.monotonic() - t0
        assert len(done) == 32 and [f.result().score for f in futures] == [float(i) for i in range(32)]
        assert elapsed < 32 * 0.2 / 4  # sequential would take 6.4 s; 8 workers ~0.8 s


def test_pool_scores_a_mixed_batch_with_the_real_rewards():
    items = []
    for i in range(12):
        record = PromptRecord(f"m{i}", "q", "math", answer=f"{i}/4")
        items.append((record, rf"\boxed{{{i / 4}}}" if i % 2 else rf"\boxed{{{i + 1}/4}}"))
    for i in range(6):
        program = ADD_PROGRAM if i % 2 else "print(0)"
        items.append((ADD_IO, fenced(program)))
        items.append((SQUARE, fenced("def f(x):\n    return x * x" if i % 3 else "def f(x):\n    return x")))
    expected = [float(i % 2) for i in range(12)]
    for i in range(6):
        expected += [float(i % 2), float(i % 3 != 0)]
    with RewardPool(workers=4, timeout_s=30) as pool:
        assert [r.score for r in pool.score(items)] == expected
        assert pool.stats["errors"] == pool.stats["timeouts"] == 0
