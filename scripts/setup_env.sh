#!/usr/bin/env bash
# Create .venv (once) and install the harness with its test extras into it.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run again (it only installs what's missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HARNESS_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  # A pinned CPU-friendly torch first: a bare `pip install torch` pulls several GB of CUDA
  # packages on some machines. GPU users: install your CUDA build of torch into .venv first.
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.4"
fi
stamp="$VENV/.harness-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  python -m pip install -q -e "$ROOT[test]"
  touch "$stamp"
fi
if ! python -c "import matbench.bench" 2>/dev/null; then
  # Only for the test that reads our Matbench submission file with matbench's own loader.
  # matbench 0.6 pins 2022-era matminer / scikit-learn / scipy / monty, which conflict with ours;
  # its loader runs on the current ones, so it is installed without its dependencies.
  python -m pip install -q --no-deps "matbench==0.6" \
    || echo "note: matbench not installed; tests/test_leaderboard.py will skip its loader check" >&2
fi
