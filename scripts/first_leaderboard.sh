#!/usr/bin/env bash
# The committed leaderboard (issue 6): every composition model on the 8 smaller extended CrabNet
# sets and 4 small Matbench tasks (compositions), every structure model on matbench_phonons,
# with one stated budget, into one MLflow store; then `harness leaderboard` writes the pages, which
# are published by copying them into leaderboards/ (see below).
#
#   bash scripts/first_leaderboard.sh            # start, or continue where it stopped
#   STAGES="classical fc" bash scripts/first_leaderboard.sh   # only some stages
#   PLAN_ONLY=1 bash scripts/first_leaderboard.sh                # list the stages and their state; run nothing
#   PUBLISH_ONLY=1 bash scripts/first_leaderboard.sh             # write the pages and publish them; run nothing
#   RETRY_FAILED=1 bash scripts/first_leaderboard.sh  # also rerun the searches that gave no test MAE (see below)
#   SETS=large GPUS_PER_TRIAL=0.25 bash scripts/first_leaderboard.sh   # on GPUs: the larger sets too
#
# Long: on a 2-core CPU the whole job is days (attention models and ALIGNN/Crysformer dominate);
# run it in the background (nohup … &). It is resumable: each stage is its own sweep workdir
# under $LEADERBOARD_RUNS (default ~/.cache/harness/leaderboard-runs/, outside the work tree), and
# a stage whose workdir exists continues with `harness sweep --resume` (finished searches are
# skipped, interrupted ones continue their Ray experiment, Optuna study and MLflow runs); a stage
# that finished (its workdir holds `stage-done`) is skipped altogether. The
# pages are regenerated after every stage, so a partial leaderboard is always current (missing
# results show as missing, never as numbers). They go beside the store ($LEADERBOARD_RUNS/pages),
# not into the committed leaderboards/: a store on a new machine starts empty, and its first
# pages would replace committed ones made from a fuller store. After each stage they are published
# into leaderboards/ model by model (a model the new pages hold on as many folds as the committed
# ones, or that is new, replaces or joins it; the dataset's page is computed again from the run
# data of both), each suite page composed again from the datasets' records, and README.md from the
# suites' index.json (scripts/publish_leaderboard.py; PUBLISH=0 to never copy;
# LEADERBOARD_OUT=leaderboards writes there directly, replacing whole suites: only for a store that
# holds every dataset they show). PUBLISH_ONLY=1 writes the pages and publishes them now, running
# nothing (e.g. before a machine goes away: the models a running stage has finished on every fold).
# Progress: `harness status ~/.cache/harness/leaderboard-runs` (one row per stage started so far).
# On a GPU the same stages run much faster: pass GPUS_PER_TRIAL=0.25 (four trials per GPU), and
# PRECISION=bf16 (on a CPU with AMX the attention and line-graph models train 1.5-3x faster).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
[ -d .venv ] || bash scripts/setup_env.sh
. .venv/bin/activate

# The store and the stage workdirs live in the cache by default, not in the work tree: the job
# outlives sessions (days on 2 cores), and a fresh checkout must not lose the runs it continues.
# A new machine starts without them: for a job that spans machines, set LEADERBOARD_RUNS to
# lasting storage, or MLFLOW_URI to an MLflow server / SQL database (the pages come from the store).
ROOT=${LEADERBOARD_RUNS:-${HARNESS_CACHE:-$HOME/.cache/harness}/leaderboard-runs}
mkdir -p "$ROOT"
MLFLOW_URI=${MLFLOW_URI:-sqlite:///$(cd "$ROOT" && pwd)/mlflow.db}  # absolute: trial workers have their own cwd
OUT=${LEADERBOARD_OUT:-$ROOT/pages}  # where the pages go; leaderboards/ only when asked (see above)
GPUS_PER_TRIAL=${GPUS_PER_TRIAL:-0}
# PRECISION=bf16: mixed precision for stages that start from now on (a started stage resumes with
# its own); each sweep's precision is shown in the pages' reproduce commands. Default fp32, the
# precision of the committed pages.
PRECISION=${PRECISION:-fp32}
# ALIGNN and Crysformer (structure-heavy) dominate the job's cost: they train in bf16 where the
# hardware has it (a GPU, or a CPU with AVX512-BF16 or AMX: ALIGNN 2.6-2.8x per epoch on an EPYC
# with AVX512-BF16, Crysformer 2.9x on a Xeon with AMX; benchmarks/RESULTS.md), as
# the pages' reproduce commands say (--precision bf16); HEAVY_PRECISION=fp32 keeps them in fp32.
if [ -z "${HEAVY_PRECISION:-}" ]; then
  HEAVY_PRECISION=$PRECISION
  if awk "BEGIN { exit !($GPUS_PER_TRIAL > 0) }" || grep -qswE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
    HEAVY_PRECISION=bf16
  fi
fi
NUM_CPUS=${NUM_CPUS:-}  # e.g. NUM_CPUS=1 leaves the other cores free; empty = all
CPU_OPTION=()
[ -n "$NUM_CPUS" ] && CPU_OPTION=(--num-cpus "$NUM_CPUS")
# Two searches side by side, so that the slot a search's last trial (or its final fits) leaves
# idle runs the next search's trials; a stage resumes with the same setting. With NUM_CPUS=1 the
# sweep runs them one after the other (one slot: two searches would wait for each other's slot).
CPU_OPTION+=(--concurrent-searches "${CONCURRENT_SEARCHES:-2}")
# The budget, the same for every model (stated on the generated pages from the runs' params):
# Optuna TPE, 4 trials per (model, dataset, fold) search, at most 10 epochs each, ASHA grace 2 and
# reduction 2; the best configuration retrained with 2 seeds on fixed splits (1 per fold on CV).
BUDGET=(--num-samples 4 --max-epochs 10 --grace-period 2 --reduction-factor 2 --sampler tpe --seed 0)

# SETS: which dataset sizes get stages. "small" (default): the sets the committed pages cover, a
# job for a 2-core CPU. "large": the larger sets of the same suites, as stages of their own
# (`<stage>-large`, same models, same budget, same store, so one set of pages shows both): the 10
# larger extended CrabNet sets (27k-342k rows), Matbench's 5 larger composition regression tasks, and
# the structure models on Matbench's 7 other structure regression tasks (their structures come from
# matbench's json, downloaded once: needs the internet). Days on GPUs, not for a CPU. "small large": both.
SETS=${SETS:-small}
EXTENDED=aflow__ael_bulk_modulus_vrh,aflow__ael_shear_modulus_vrh,aflow__ael_debye_temperature,aflow__agl_thermal_conductivity_300K,aflow__agl_thermal_expansion_300K,mp_bulk_modulus,mp_shear_modulus,mp_elastic_anisotropy
# the attention models' first two of them (their slowest crabnet28 stage, split in two so that a stage ends sooner)
AFLOW_ELASTIC=aflow__ael_bulk_modulus_vrh,aflow__ael_shear_modulus_vrh
EXTENDED_REST=aflow__ael_debye_temperature,aflow__agl_thermal_conductivity_300K,aflow__agl_thermal_expansion_300K,mp_bulk_modulus,mp_shear_modulus,mp_elastic_anisotropy
MATBENCH=matbench_steels,matbench_jdft2d,matbench_expt_gap,matbench_dielectric

CLASSICAL=rf,linear,ridge,elasticnet,svr,adaboost,decision_tree,gradient_boosting
FC=irnet17,irnet48,srnet17,plainnet17,elemnet,roost
ATTENTION=crabnet,hotcrab,lgdcnn,lgdcnn_v1
STRUCTURE_LIGHT=cgcnn,schnet,lern,irnet17_structure,irnet48_structure
STRUCTURE_HEAVY=alignn,crysformer

EXTENDED_LARGE=aflow__Egap,aflow__energy_atom,CritExam__Ed,CritExam__Ef,mp_e_hull,mp_mu_b,OQMD_Bandgap,OQMD_Energy_per_atom,OQMD_Formation_Enthalpy,OQMD_Volume_per_atom
MATBENCH_LARGE=matbench_log_gvrh,matbench_log_kvrh,matbench_perovskites,matbench_mp_gap,matbench_mp_e_form
STRUCTURE_LARGE=matbench_dielectric,matbench_jdft2d,matbench_log_gvrh,matbench_log_kvrh,matbench_perovskites,matbench_mp_gap,matbench_mp_e_form
# SVR (RBF) is left out on the large sets: its fit is O(N^2) in memory and time (85k-273k training rows).
CLASSICAL_LARGE=rf,linear,ridge,elasticnet,adaboost,decision_tree,gradient_boosting

# stage name | models | datasets | final seeds | precision | extra options. The Matbench stages first,
# one dataset at a time (smallest first; its classical, fully connected and attention models in
# three sweeps), so that a store that starts empty (a new machine) catches up on one dataset after
# another: pages are published per dataset and per model (scripts/publish_leaderboard.py), whatever
# the other datasets' state. Then matbench_phonons (structure models; ALIGNN and Crysformer dominate the whole job's
# cost), then the crabnet28 stages. A stage that has not started runs only the models leaderboards/
# still lacks on its datasets (a result on every fold, no failed fit): where the committed pages
# hold a dataset's run data, models are published one by one, so the others are skipped; pages
# without run data are replaced only as a whole, so there every model runs unless the dataset is
# complete (every model of every stage). A stage with nothing to run is skipped. SKIP_PUBLISHED=0
# runs every model of every stage.
PLAN=()
for entry in steels:matbench_steels jdft2d:matbench_jdft2d expt-gap:matbench_expt_gap dielectric:matbench_dielectric; do
  short=${entry%%:*} dataset=${entry#*:}
  PLAN+=("classical-$short|$CLASSICAL|$dataset|1|$PRECISION|--reuse-actors"
         "fc-$short|$FC|$dataset|1|$PRECISION|"
         "attention-$short|$ATTENTION|$dataset|1|$PRECISION|")
done
PLAN+=(
  "structure-light|$STRUCTURE_LIGHT|matbench_phonons|1|$PRECISION|"
  "structure-heavy|$STRUCTURE_HEAVY|matbench_phonons|1|$HEAVY_PRECISION|"
  "classical-extended|$CLASSICAL|$EXTENDED|2|$PRECISION|--reuse-actors"
  "fc-extended|$FC|$EXTENDED|2|$PRECISION|"
  "attention-aflow-elastic|$ATTENTION|$AFLOW_ELASTIC|2|$PRECISION|"
  "attention-extended|$ATTENTION|$EXTENDED_REST|2|$PRECISION|"
)
LARGE_PLAN=(
  "classical-extended-large|$CLASSICAL_LARGE|$EXTENDED_LARGE|2|$PRECISION|--reuse-actors"
  "fc-extended-large|$FC|$EXTENDED_LARGE|2|$PRECISION|"
  "attention-extended-large|$ATTENTION|$EXTENDED_LARGE|2|$PRECISION|"
  "classical-matbench-large|$CLASSICAL_LARGE|$MATBENCH_LARGE|1|$PRECISION|--reuse-actors"
  "fc-matbench-large|$FC|$MATBENCH_LARGE|1|$PRECISION|"
  "attention-matbench-large|$ATTENTION|$MATBENCH_LARGE|1|$PRECISION|"
  "structure-light-large|$STRUCTURE_LIGHT|$STRUCTURE_LARGE|1|$PRECISION|"
  "structure-heavy-large|$STRUCTURE_HEAVY|$STRUCTURE_LARGE|1|$HEAVY_PRECISION|"
)
SELECTED=()
for size in $SETS; do
  case "$size" in
    small) SELECTED+=("${PLAN[@]}") ;;
    large) SELECTED+=("${LARGE_PLAN[@]}") ;;
    *) echo "SETS=\"$SETS\": each word must be small or large" >&2; exit 2 ;;
  esac
done
STAGES=${STAGES:-"classical fc attention structure-light structure-heavy"}
DONE_FILE=stage-done
# RETRY_FAILED=1: in every selected stage, finished ones too, run again the searches that gave no
# test MAE (every trial failed, e.g. on a full disk, or their final fits did): `--resume --retry-failed`.
# Failed runs stay in MLflow. E.g. STAGES=attention-extended RETRY_FAILED=1 bash scripts/first_leaderboard.sh
RETRY=()
[ "${RETRY_FAILED:-0}" = 1 ] && RETRY=(--retry-failed)

# Every model that some stage of the plan runs on one of the datasets $1 (comma-separated).
planned_models() {
  local entry name models datasets rest d
  local -A seen=()
  for entry in "${SELECTED[@]}"; do
    IFS='|' read -r name models datasets rest <<<"$entry"
    for d in ${1//,/ }; do
      if [[ ",$datasets," == *",$d,"* ]]; then
        for m in ${models//,/ }; do seen[$m]=1; done
        break
      fi
    done
  done
  local IFS=,
  echo "${!seen[*]}"
}

# Which of the models $2 must still run on the datasets $1 for leaderboards/ (PUBLISHED_DIR) to be
# complete (see above); empty: none.
PUBLISHED_DIR=${PUBLISHED_DIR:-leaderboards}
to_run() {
  if [ "${SKIP_PUBLISHED:-1}" != 1 ] || [ ! -d "$PUBLISHED_DIR" ]; then
    echo "$2"
    return
  fi
  # a check that fails (unreadable pages) runs every model rather than skip any
  python scripts/publish_leaderboard.py --published "$PUBLISHED_DIR" --to-run "$1" --models "$2" \
    --planned "$(planned_models "$1")" 2>/dev/null || echo "$2"
}

wanted() {  # is stage $1 selected by a word of $STAGES (a prefix: "fc" selects fc-extended and fc-matbench)?
  local word
  for word in $STAGES; do [[ "$1" == "$word"* ]] && return 0; done
  return 1
}

# PLAN_ONLY=1: one line per selected stage (its state, models and datasets); nothing runs.
if [ "${PLAN_ONLY:-0}" = 1 ]; then
  echo "store: $MLFLOW_URI; stage workdirs under $ROOT"
  for entry in "${SELECTED[@]}"; do
    IFS='|' read -r name models datasets seeds precision extra <<<"$entry"
    wanted "$name" || continue
    state=new
    [ -f "$ROOT/$name/sweep.json" ] && state=started
    [ -f "$ROOT/$name/$DONE_FILE" ] && state="finished $(cat "$ROOT/$name/$DONE_FILE")"
    if [ "$state" = new ]; then
      todo=$(to_run "$datasets" "$models")
      if [ -z "$todo" ]; then state=published; elif [ "$todo" != "$models" ]; then state="new, published but $todo"; fi
    fi
    echo "$name | $state | $models | $datasets | $seeds final seed(s) | $precision"
  done
  exit 0
fi

publish_pages() {  # into leaderboards/ (see above); the copy is left for a person to commit
  if [ "${PUBLISH:-1}" = 1 ] && ! [ "$OUT" -ef leaderboards ]; then
    python scripts/publish_leaderboard.py "$OUT" --apply || true
  fi
}

if [ "${PUBLISH_ONLY:-0}" = 1 ]; then
  harness leaderboard --mlflow-uri "$MLFLOW_URI" --out "$OUT"
  publish_pages
  exit 0
fi

for entry in "${SELECTED[@]}"; do
  IFS='|' read -r name models datasets seeds precision extra <<<"$entry"
  wanted "$name" || continue
  workdir="$ROOT/$name"
  # A stage whose sweep finished and whose pages were written is not resumed again on the next
  # start (resuming a finished sweep and rewriting its pages took 1-3 min per stage, each restart).
  # Delete the file to run the stage's `--resume` once more.
  if [ -f "$workdir/$DONE_FILE" ] && [ ${#RETRY[@]} = 0 ]; then
    echo "== stage $name: finished $(cat "$workdir/$DONE_FILE"); skipped (rm $workdir/$DONE_FILE to resume it)"
    continue
  fi
  if [ ! -f "$workdir/sweep.json" ]; then
    todo=$(to_run "$datasets" "$models")
    if [ -z "$todo" ]; then
      echo "== stage $name: $PUBLISHED_DIR/ already shows $models complete on $datasets; skipped (SKIP_PUBLISHED=0 runs it)"
      continue
    fi
    if [ "$todo" != "$models" ]; then
      echo "== stage $name: $PUBLISHED_DIR/ shows the others complete; running only $todo"
      models=$todo
    fi
  fi
  echo "== $(date '+%F %T') stage $name: $models on $datasets"
  if [ -f "$workdir/sweep.json" ]; then
    # shellcheck disable=SC2086
    harness sweep --resume "$workdir" --mlflow-uri "$MLFLOW_URI" "${CPU_OPTION[@]}" "${RETRY[@]}"
  else
    # shellcheck disable=SC2086
    harness sweep --models "$models" --datasets "$datasets" --workdir "$workdir" --mlflow-uri "$MLFLOW_URI" \
      "${BUDGET[@]}" --final-seeds "$seeds" --gpus-per-trial "$GPUS_PER_TRIAL" --precision "$precision" \
      "${CPU_OPTION[@]}" $extra
  fi
  harness leaderboard --mlflow-uri "$MLFLOW_URI" --out "$OUT"
  date '+%F %T' > "$workdir/$DONE_FILE"  # the sweep exited 0 (set -e): every search of the stage is done
  publish_pages
done
echo "== $(date '+%F %T') done; pages in $OUT/"
