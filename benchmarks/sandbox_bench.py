"""Throughput and latency of the bubblewrap sandbox (`rollout.sandbox.run_python`) on tiny programs.

    PYTHONPATH=. python3 benchmarks/sandbox_bench.py [--programs 50] [--workers 1,4,8] [--out FILE]

Each program prints its index (`print(i)`); a run counts as failed unless it exits 0 with exactly that output.
- `runs_per_s`: programs / wall time, with 1 (sequential) and N parallel callers (threads, each waiting on its
  own bwrap subprocess);
- `median_start_latency_s` / `p90_latency_s` / `max_latency_s`: launch-to-exit time of one program (namespaces, mounts,
  the rlimit launcher, interpreter start-up and tear-down: what a one-test code reward costs at least);
- `bare_python_s`: median launch-to-exit of the same interpreter without the sandbox (`python -I -S -c ...`),
  so the sandbox's own overhead is the difference;
- `code_reward_per_s`: whole code rewards per second with N callers, on the demo's task shape (a program defining
  f(x), four function-call cases): one sandbox run of the harness (runner and program processes, plain-data
  answers judged outside), which is what an RL step pays per code response.
Prints one JSON line per worker count and a final {"summary": ...} line (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ringjax.data import PromptRecord
from rollout.rewards import code_reward
from rollout.sandbox import SandboxLimits, bwrap_binary, bwrap_version, interpreter, run_python, sandbox_available
from _summary import emit_summary

TASK = PromptRecord("bench", "Write f(x): add 3, then double.", "code",
                    tests=[{"call": "f", "args": [x], "expected": (x + 3) * 2} for x in (0, 1, -2, 5)])


def _one(i: int, limits: SandboxLimits) -> tuple[bool, float]:
    res = run_python(f"print({i})", limits=limits)
    return res.ok and res.stdout == f"{i}\n", res.wall_s


def _timed(fn, n: int, workers: int) -> tuple[list, float]:
    """(fn(0..n-1) from `workers` threads, seconds they took), after a warm-up of min(workers, 4) calls."""
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(fn, range(min(workers, 4))))
        t0 = time.perf_counter()
        results = list(ex.map(fn, range(n)))
        return results, time.perf_counter() - t0


def bench_workers(programs: int, workers: int, limits: SandboxLimits) -> dict:
    results, total = _timed(lambda i: _one(i, limits), programs, workers)
    lat = sorted(w for _, w in results)
    return {"workers": workers, "programs": programs, "failed": sum(not ok for ok, _ in results),
            "runs_per_s": round(programs / total, 1), "total_s": round(total, 3),
            "median_start_latency_s": round(statistics.median(lat), 4),
            "p90_latency_s": round(lat[int(0.9 * (len(lat) - 1))], 4), "max_latency_s": round(lat[-1], 4),
            "mean_latency_s": round(statistics.fmean(lat), 4)}


def bench_rewards(programs: int, workers: int, limits: SandboxLimits) -> dict:
    response = "```python\ndef f(x):\n    return (x+3)*2\n```"
    verdicts, total = _timed(lambda _: code_reward(TASK, response, limits), programs, workers)
    return {"workers": workers, "rewards": programs, "failed": sum(v.score != 1.0 for v in verdicts),
            "code_reward_per_s": round(programs / total, 1)}


def bare_python_s(runs: int) -> float:
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        subprocess.run([interpreter()[0], "-I", "-S", "-c", f"print({i})"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 4)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=50)
    ap.add_argument("--workers", default=f"1,{os.cpu_count() or 1},{2 * (os.cpu_count() or 1)}")
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    args = ap.parse_args(argv)
    reason = sandbox_available()
    if reason is not None:
        sys.exit(f"sandbox unavailable: {reason}")
    limits = SandboxLimits(cpu_s=5, memory_mb=1024, wall_s=30)
    env = {"bwrap": bwrap_binary(), "bwrap_version": ".".join(map(str, bwrap_version(bwrap_binary()))),
           "python": interpreter()[0], "cpus": os.cpu_count(), "root": os.geteuid() == 0,
           "limits": {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "nproc": limits.nproc,
                      "open_files": limits.open_files}}
    print(json.dumps({"env": env}), flush=True)
    results = []
    for workers in dict.fromkeys(int(w) for w in args.workers.split(",")):
        row = bench_workers(args.programs, workers, limits)
        print(json.dumps(row), flush=True)
        results.append(row)
    rewards = []
    for workers in dict.fromkeys(int(w) for w in args.workers.split(",")):
        row = bench_rewards(args.programs, workers, limits)
        print(json.dumps(row), flush=True)
        rewards.append(row)
    seq = next((r for r in results if r["workers"] == 1), results[0])
    summary = {"env": env, "results": results, "rewards": rewards,
               "bare_python_s": bare_python_s(min(args.programs, 20)),
               "median_start_latency_s": seq["median_start_latency_s"],
               "runs_per_s": {f"w{r['workers']}": r["runs_per_s"] for r in results},
               "code_reward_per_s": {f"w{r['workers']}": r["code_reward_per_s"] for r in rewards}}
    return emit_summary(summary, args.out)


if __name__ == "__main__":
    main()
