"""The code reward and its sandbox against the hostile catalogue (`hostile_attacks.py`), as root and as nobody.

The whole catalogue is scored twice with real bwrap: in this process (root: bwrap's privileged mode) and in
`hostile_nonroot.py`, started as root and dropped to uid/gid 65534 (bwrap's unprivileged, user-namespace mode).
Every attack must get its expected score (0 for a contained attack, 1 for honest programs and for attacks that
also solve the task honestly), code_reward must not raise, a correct program must still score 1 right after, and
the attack's own host checks must pass; after each run, nothing may have reached the host (files, connections,
processes left behind, the canary process, kernel settings).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from hostile_attacks import ATTACKS, KINDS, HostContext, HostFixture, problems, records, score_catalogue
from rollout.rewards import parse_tests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534
BY_NAME = {a.name: a for a in ATTACKS}


@pytest.fixture(scope="module")
def host():
    assert os.geteuid() == 0, ("the hostile suite runs as root: it scores the catalogue as root, then as an "
                               "unprivileged user it drops to")
    with HostFixture(REPO) as fixture:
        yield fixture


@pytest.fixture(scope="module")
def root_run(host):
    outcomes = score_catalogue(host.ctx)
    return outcomes, host.problems()


@pytest.fixture(scope="module")
def nonroot_run(host, root_run):
    assert os.access(SYSTEM_PYTHON, os.X_OK), (
        f"{SYSTEM_PYTHON} is missing: the unprivileged sandbox runs the system's python 3, which every user can "
        f"read (apt-get install python3)")
    folder = tempfile.mkdtemp(prefix="ringjax-bwrap-")
    os.chmod(folder, 0o755)
    try:
        proc = subprocess.run([sys.executable, os.path.join(HERE, "hostile_nonroot.py"), host.ctx.to_json(), folder],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                              timeout=300)
    finally:
        shutil.rmtree(folder)
    assert proc.returncode == 0, f"the unprivileged runner failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report, host.problems()


def test_catalogue_covers_every_class():
    counts = collections.Counter(a.kind for a in ATTACKS)
    assert set(counts) == set(KINDS)
    assert sum(n for kind, n in counts.items() if kind != "honest") >= 30
    assert len(BY_NAME) == len(ATTACKS), "attack names must be unique"
    ctx = HostContext("/o", 1, "u", "m", "/r", "s", "ringjax-canary-" + "0" * 32, 1, 1, 0.0)
    recs = records(ctx)
    for attack in ATTACKS:
        assert attack.record in recs, attack.name
        attack.render(ctx)  # every placeholder is known
    # each test format takes the path the attacks aim at: converted asserts, raw asserts, calls, stdin/stdout
    for name in ("SQ_ASSERT", "SET_ASSERT", "CANARY_ASSERT"):
        tests = parse_tests(recs[name].tests, name)
        assert tests.calls and not tests.asserts, name
    for name in ("SQ_RAW", "LEN_RAW", "CANARY_RAW", "RAISES_RAW"):
        tests = parse_tests(recs[name].tests, name)
        assert tests.asserts and not tests.calls, name
    assert parse_tests(recs["ADD_IO"].tests).io and parse_tests(recs["ADD_CALL"].tests).calls


@pytest.mark.parametrize("name", list(BY_NAME))
def test_as_root(host, root_run, name):
    outcomes, _ = root_run
    assert problems(BY_NAME[name], host.ctx, outcomes[name]) == []


@pytest.mark.parametrize("name", list(BY_NAME))
def test_as_unprivileged_user(nonroot_run, name):
    report, _ = nonroot_run
    ctx = HostContext.from_json(report["ctx"])
    assert problems(BY_NAME[name], ctx, report["outcomes"][name]) == []


def test_root_run_left_the_host_untouched(root_run):
    assert root_run[1] == []


def test_unprivileged_run_dropped_privileges_and_left_the_host_untouched(nonroot_run):
    report, host_problems = nonroot_run
    assert (report["uid"], report["euid"], report["gid"]) == (NOBODY, NOBODY, NOBODY)
    assert report["canary_alive"], "a sandbox killed the unprivileged scorer's canary process"
    assert report["left_behind"] == [], "sandboxed processes outlived their runs"
    assert host_problems == []
