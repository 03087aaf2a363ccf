"""The bubblewrap sandbox's API with real bwrap (no mocks): results, files, limits and the reasons a run is killed.

Hostile programs (escapes, resource exhaustion, reward hacks) are the catalogue of `hostile_attacks.py`, scored
as root and as an unprivileged user by `test_hostile.py`.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ringjax.data import PromptRecord
from rollout.rewards import code_reward
from rollout.sandbox import BOX, SandboxLimits, bwrap_binary, run_python, sandbox_available

LIMITS = SandboxLimits(cpu_s=2, memory_mb=512, file_mb=4, nproc=16, wall_s=5, output_bytes=64 << 10, disk_mb=16)
ADD = PromptRecord("add", "read a b, print a+b", "code", tests=[{"input": "2 3\n", "output": "5\n"}])
GOOD = "a, b = map(int, input().split())\nprint(a + b)\n"


def reward(program: str) -> float:
    return code_reward(ADD, f"```python\n{program}\n```", limits=LIMITS).score


def box_processes() -> list[int]:
    """Host pids of processes still running a sandboxed program."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f"{BOX}/main.py".encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def assert_contained_and_serving():
    deadline = time.monotonic() + 3  # the pid namespace is torn down asynchronously after bwrap is killed
    while box_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert box_processes() == [], "sandboxed processes outlived their run"
    assert reward(GOOD) == 1.0, "the sandbox stopped serving correct programs"


def test_available_and_located():
    assert sandbox_available() is None
    assert os.access(bwrap_binary(), os.X_OK)


def test_correct_program_passes_and_wrong_one_fails():
    assert reward(GOOD) == 1.0
    assert reward("print(6)") == 0.0
    res = run_python(GOOD, stdin="40 2\n", limits=LIMITS)
    assert res.ok and res.stdout == "42\n" and res.stderr == "" and not res.timed_out


def test_box_is_the_only_writable_place_and_files_arrive():
    probe = ("import os\nprint(open('data/in.txt').read(), os.getcwd())\nopen('out.txt', 'w').write('x')\n"
             "open('/tmp/t', 'w').write('x')\n"
             "for p in ('/usr/x', '/x', '/proc/x'):\n"
             "    try:\n        open(p, 'w')\n        print('wrote', p)\n    except OSError:\n        pass\n")
    res = run_python(probe, files={"data/in.txt": "hello"}, limits=LIMITS)
    assert res.ok, res.stderr
    assert res.stdout.split() == ["hello", BOX]
    with pytest.raises(ValueError, match="'../x'"):
        run_python("", files={"../x": ""}, limits=LIMITS)


def test_standard_library_only_unless_asked():
    res = run_python("import yaml", limits=LIMITS)
    assert res.returncode == 1 and "ModuleNotFoundError" in res.stderr
    assert run_python("import yaml", limits=LIMITS, site_packages=True).ok


def test_infinite_loop_and_sleep():
    assert reward("while True:\n    pass\n") == 0.0
    # a generous wall clock, so that it is RLIMIT_CPU that stops the loop even on a loaded machine
    res = run_python("while True:\n    pass\n", limits=SandboxLimits(cpu_s=1, wall_s=60))
    assert res.killed_reason == "cpu_limit" and not res.timed_out
    # sleeping uses no CPU: only the wall clock stops it
    res = run_python("import time\ntime.sleep(60)\n", limits=SandboxLimits(cpu_s=1, wall_s=1))
    assert res.timed_out and res.killed_reason == "wall_timeout" and res.returncode is None
    assert 1 <= res.wall_s < 10
    assert_contained_and_serving()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_capped(stream):
    flood = f"import sys\nwhile True:\n    sys.{stream}.write('5' * (1 << 20))\n"
    assert reward(flood) == 0.0
    res = run_python(flood, limits=LIMITS)
    assert res.killed_reason == "output_limit" and res.wall_s < LIMITS.wall_s
    assert len(getattr(res, stream)) == LIMITS.output_bytes
    assert_contained_and_serving()


def test_parallel_runs_are_independent():
    """A fork bomb running next to correct programs takes none of their process budget."""
    bomb = ("import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
            "        time.sleep(0.01)\n")
    with ThreadPoolExecutor(5) as ex:
        bombs = [ex.submit(run_python, bomb, limits=SandboxLimits(cpu_s=2, nproc=16, wall_s=3))]
        time.sleep(0.3)
        goods = [ex.submit(reward, GOOD) for _ in range(4)]
        assert [g.result() for g in goods] == [1.0] * 4
        assert bombs[0].result().killed_reason in ("wall_timeout", "cpu_limit")
    assert_contained_and_serving()
