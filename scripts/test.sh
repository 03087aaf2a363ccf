#!/usr/bin/env bash
# The whole test suite on a fresh machine (the README's second command): installs ringjax with its test
# extras at the pinned versions, SGLang's CPU build (into this python) and vLLM's CPU build (its own virtualenv,
# .venv-vllm/) for the serving parity tests, then lints and runs pytest in RINGJAX_TEST_WORKERS processes (default 2,
# one test file per process at a time: XLA compiles on one core, so two processes halve the wall time on a 2-core
# machine; each worker holds its own 8 simulated devices and a few GB of memory).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k hf`, or `-n 0` for one process.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[test]"
bash scripts/install_sglang_cpu.sh
bash scripts/install_vllm_cpu.sh
python3 -m ruff check ringjax rollout tests benchmarks scripts notebooks
python3 -m pytest -q -n "${RINGJAX_TEST_WORKERS:-2}" --dist loadfile --durations=15 "$@"
