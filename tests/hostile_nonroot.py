"""Scores the hostile catalogue (`hostile_attacks.py`) as an unprivileged user: uid and gid 65534, no groups.

    python tests/hostile_nonroot.py CONTEXT_JSON FOLDER        (started as root by tests/test_hostile.py)

Prints one JSON line: {"uid", "euid", "gid", "ctx" (the context the attacks saw), "canary_alive", "left_behind"
(sandboxed processes that outlived their runs, found as this process's orphans), "outcomes"}.

Everything is prepared as root, because the test's interpreter may live where other users cannot enter (pyenv
under /root): every module the run needs is imported, bwrap is copied with the libraries it loads from beside it
(a wheel's bundled libcap) into FOLDER (which the caller removes) and named by RINGJAX_BWRAP, and sandboxed programs
run the system's /usr/bin/python3 (RINGJAX_SANDBOX_PYTHON). Only then does the process drop its privileges and
score, with its own canary process (a `sleep` of the same user, which `kill(-1, 9)` from an escaped sandbox would
reach) and its own pid as the scorer's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import hostile_attacks as ha  # noqa: E402
from rollout.sandbox import bwrap_binary, interpreter  # noqa: E402

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"


def portable_bwrap(binary: str, dest: str) -> str:
    """Copy `binary` into `dest` with the non-system libraries it loads (found with ldd), keeping their relative
    layout so that an $ORIGIN rpath still resolves; everything world-readable. Returns the copy's path."""
    binary = os.path.realpath(binary)
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = [os.path.realpath(m) for m in re.findall(r"=> (/\S+)", ldd) if not m.startswith(("/lib", "/usr/"))]
    top = os.path.commonpath([os.path.dirname(binary), *[os.path.dirname(p) for p in libs]])
    for path in [binary, *libs]:
        target = os.path.join(dest, os.path.relpath(path, top))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(path, target)
        os.chmod(target, 0o755)
    for folder, _dirs, _files in os.walk(dest):
        os.chmod(folder, 0o755)
    return os.path.join(dest, os.path.relpath(binary, top))


def prepare(folder: str) -> None:
    """As root: the bwrap copy (in `folder`) and the sandbox's interpreter in place, every import done (one honest
    scoring of each test format)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        sys.exit(f"{SYSTEM_PYTHON} is missing: the unprivileged sandbox needs a system python 3 that every user can "
                 f"run (apt-get install python3)")
    copy = portable_bwrap(bwrap_binary(), folder)
    os.environ["RINGJAX_BWRAP"] = copy
    os.environ["RINGJAX_SANDBOX_PYTHON"] = SYSTEM_PYTHON
    bwrap_binary.cache_clear()  # both are cached: resolved again from the variables just set
    interpreter.cache_clear()
    if bwrap_binary() != copy or interpreter()[0] != os.path.realpath(SYSTEM_PYTHON):
        sys.exit(f"RINGJAX_BWRAP / RINGJAX_SANDBOX_PYTHON not picked up: {bwrap_binary()}, {interpreter()}")
    warm_up()


def warm_up() -> None:
    """One honest program per test format, so that everything the scoring imports lazily is loaded now."""
    ctx = ha.HostContext(outside="/nonexistent", port=1, unix_name="x", marker="warm", repo="/nonexistent",
                         secret="x", canary="ringjax-canary-" + "0" * 32, scorer_pid=1, canary_pid=1, started=0.0)
    recs = ha.records(ctx)
    for attack in ha.HONEST:
        if attack.record in ("ADD_IO", "ADD_CALL", "SQ_RAW"):
            outcome = ha.score_attack(attack, ctx, recs)
            if outcome["score"] != 1.0:
                sys.exit(f"warm-up: {attack.name} scored {outcome} before dropping privileges")


def drop_privileges() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    if os.geteuid() == 0 or os.getegid() == 0:
        sys.exit("failed to drop root privileges")


def main() -> None:
    ctx = ha.HostContext.from_json(sys.argv[1])
    prepare(sys.argv[2])
    drop_privileges()
    ha.set_subreaper(True)
    canary = subprocess.Popen(["sleep", "600"])
    ctx = dataclasses.replace(ctx, scorer_pid=os.getpid(), canary_pid=canary.pid)
    outcomes = ha.score_catalogue(ctx)
    left = ha.settle(ctx.marker)
    alive = canary.poll() is None
    canary.kill()
    canary.wait()
    print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "ctx": ctx.to_json(),
                      "canary_alive": alive, "left_behind": left, "outcomes": outcomes}))


if __name__ == "__main__":
    main()
