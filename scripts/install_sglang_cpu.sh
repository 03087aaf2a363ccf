#!/usr/bin/env bash
# Installs SGLang 0.5.23 for CPU-only use (parity tests against real SGLang) into the current python:
# exactly the pinned set in requirements/sglang-cpu.txt, every package with --no-deps, so pip resolves nothing and
# the core pins (jax, flax, numpy, ...) are never touched. SGLang's CUDA-only dependencies are left out; on CPU it
# runs with SGLANG_USE_CPU_ENGINE=1 and the sgl_kernel stand-in in tests/sglang_support (see runner.py there).
# Idempotent: a quick no-op when every pinned version is already installed. About 2-3 minutes on a fresh machine
# (torch 2.14.1 and its CUDA runtime wheels come from local files). Set PYTHON to use another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
REQ=requirements/sglang-cpu.txt

# Prints the pinned packages whose installed version differs (nothing when all match).
missing() {
    "$PY" scripts/pinned.py "$REQ"
}

todo="$(missing)"
if [ -z "$todo" ]; then
    echo "install_sglang_cpu: sglang $("$PY" -c 'from importlib.metadata import version; print(version("sglang"))') and its CPU dependencies already installed"
    exit 0
fi
echo "install_sglang_cpu: installing $(echo "$todo" | wc -l) package(s), e.g. $(echo "$todo" | head -1)"

core_versions() {
    "$PY" -c 'from importlib import metadata as m
for n in ("jax", "jaxlib", "flax", "numpy"):
    try: print(n, m.version(n))
    except m.PackageNotFoundError: print(n, None)'
}
before="$(core_versions)"
start=$SECONDS
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps -r "$REQ"
after="$(core_versions)"
if [ "$before" != "$after" ]; then
    echo "install_sglang_cpu: core versions changed!" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
fi
todo="$(missing)"
if [ -n "$todo" ]; then
    echo "install_sglang_cpu: still not at the pinned version:" >&2
    echo "$todo" >&2
    exit 1
fi
echo "install_sglang_cpu: done in $((SECONDS - start)) s"
