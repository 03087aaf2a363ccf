"""The bubblewrap sandbox against hostile programs, with real bwrap (no mocks).

Each hostile program is written to print the right answer only if its attack SUCCEEDED, so a 0 from
`code_reward` means the attack was contained; every test also checks the attack's side effect directly (file not
created, no connection received, no process left behind) and that a correct program still passes afterwards.
"""

import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from ringjax.data import PromptRecord
from rollout.rewards import code_reward
from rollout.sandbox import BOX, SandboxLimits, bwrap_binary, run_python, sandbox_available

LIMITS = SandboxLimits(cpu_s=2, memory_mb=256, file_mb=4, nproc=16, wall_s=5, output_bytes=64 << 10, disk_mb=16)
ADD = PromptRecord("add", "read a b, print a+b", "code", tests=[{"input": "2 3\n", "output": "5\n"}])
GOOD = "a, b = map(int, input().split())\nprint(a + b)\n"


def reward(program: str) -> float:
    return code_reward(ADD, f"```python\n{program}\n```", limits=LIMITS)


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


def test_fork_bomb():
    bomb = "import os\nwhile True:\n    os.fork()\n"
    assert reward(bomb) == 0.0
    # 40 live children would need 41 processes: only possible if RLIMIT_NPROC (16) is not enforced
    many = ("import os, time\nfor _ in range(40):\n    if os.fork() == 0:\n        time.sleep(30)\n"
            "        os._exit(0)\nprint(5)\n")
    assert reward(many) == 0.0
    res = run_python(many, limits=LIMITS)
    assert "Resource temporarily unavailable" in res.stderr
    assert_contained_and_serving()


def test_memory_bomb():
    assert reward("x = bytearray(1 << 30)\nprint(5)") == 0.0  # 1 GiB > 256 MiB address space
    res = run_python("a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n", limits=LIMITS)
    assert res.returncode != 0 and "MemoryError" in res.stderr
    assert_contained_and_serving()


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


def test_no_network():
    assert reward("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\nprint(5)") == 0.0
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    got = []

    def accept():
        try:
            got.append(server.accept())
        except OSError:
            pass

    listener = threading.Thread(target=accept)
    listener.start()
    attack = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'x')\nprint(5)"
    assert reward(attack) == 0.0
    listener.join()
    server.close()
    assert got == [], "the sandbox reached a server on the host's loopback"
    assert_contained_and_serving()


def test_cannot_read_outside_its_folder(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("5\n")  # the right answer: reading it would pass the test
    assert reward(f"print(open({str(secret)!r}).read())") == 0.0
    assert reward("open('/etc/shadow').read()\nprint(5)") == 0.0
    assert reward(f"import os\nos.listdir({str(tmp_path)!r})\nprint(5)") == 0.0
    assert_contained_and_serving()


def test_cannot_write_outside_its_folder(tmp_path):
    targets = [tmp_path / "pwned", os.path.join(os.path.expanduser("~"), f"pwned-{uuid.uuid4().hex}"),
               os.path.join(os.getcwd(), f"pwned-{uuid.uuid4().hex}")]
    private = f"/tmp/pwned-{uuid.uuid4().hex}"  # the box's /tmp is a private tmpfs: the write works, in there
    try:
        for target in targets:
            assert reward(f"open({str(target)!r}, 'w').write('x')\nprint(5)") == 0.0
        assert reward(f"open({private!r}, 'w').write('x')\nprint(5)") == 1.0
        for target in [*targets, private]:
            assert not os.path.exists(target), f"the sandbox wrote {target}"
    finally:
        for target in [*targets, private]:
            if os.path.exists(target):
                os.remove(target)
    assert_contained_and_serving()


@pytest.mark.parametrize("attack", [
    "os.kill(os.getppid(), 9)\nos.killpg(os.getpgid(0), 9)",  # its parent (the namespace's init), its group
    "os.kill(-1, 9)",  # every process it may signal
    f"os.kill({os.getpid()}, 9)\nprint(5)",  # the test process, by its host pid
    f"os.killpg({os.getpgid(0)}, 9)\nprint(5)",  # the test's process group
])
def test_cannot_kill_its_parent_or_the_host(attack):
    assert reward(f"import os\n{attack}\n") == 0.0
    assert_contained_and_serving()  # and this process is still alive to check it


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
