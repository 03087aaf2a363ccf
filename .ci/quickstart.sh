#!/usr/bin/env bash
# CI: the README's first command exactly as a newcomer types it. Clones HEAD into a temporary folder, makes a fresh
# virtualenv there, reads the command from the README's quick start (not a copy of it), runs it from the clone's
# root (relative paths and all), then checks the run (.ci/check_quickstart.py): exit 0, the accuracy table printed,
# the final stage above SFT, the HF export present, and no warning or error line from a dependency on the console.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
git clone -q "$repo" "$tmp/ringjax"
cd "$tmp/ringjax"
cmd="$(python3 .ci/check_quickstart.py --command README.md)"
python3 -m venv "$tmp/venv"
# shellcheck disable=SC1091
source "$tmp/venv/bin/activate"
echo "quickstart: $cmd   (in a fresh clone and virtualenv, $(python3 --version))"
start=$SECONDS
set +e
bash -c "$cmd" > "$tmp/console.log" 2>&1
rc=$?
set -e
echo "quickstart: exit $rc after $((SECONDS - start)) s"
python3 .ci/check_quickstart.py --check "$tmp/console.log" --rc "$rc" --out runs/demo
