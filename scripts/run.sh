#!/usr/bin/env bash
# The main job on the embedded default (local Ray in-process, sqlite MLflow in runs/default):
# install, fetch data, a small real sweep of CrabNet and HotCrab, and the leaderboard.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/setup_env.sh
WORKDIR="${WORKDIR:-runs/default}"
harness data fetch crabnet28
harness data list --suite crabnet28
harness sweep --models crabnet,hotcrab --datasets aflow__ael_bulk_modulus_vrh \
  --num-samples "${NUM_SAMPLES:-4}" --max-epochs "${MAX_EPOCHS:-10}" --final-seeds "${FINAL_SEEDS:-2}" \
  --workdir "$WORKDIR" "$@"
harness leaderboard --suite crabnet28 --workdir "$WORKDIR"   # pages in $WORKDIR/leaderboards/
echo "leaderboard: $WORKDIR/leaderboards/crabnet28.md · browse the runs: harness ui --workdir $WORKDIR"
