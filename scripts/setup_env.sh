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
