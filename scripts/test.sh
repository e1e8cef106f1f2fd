#!/usr/bin/env bash
# Install (if needed) and run the test suite: real data, real Ray, real MLflow, tiny budgets.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/setup_env.sh
python -m pytest -q "$@"
