#!/usr/bin/env bash
# Behaviour cloning vs + DART vs + DAgger on the state policy (issue 10, item 2): the same recipe, the same
# evaluation seeds, only the data differs. Every stage is seeded and resumable: re-running the script
# after an interruption continues where it stopped (collection skips recorded seeds; training resumes
# from its latest checkpoint; a finished stage is skipped).
#
#   bash scripts/corrective_data.sh [WORK_DIR]        (default outputs/corrective; ~2.5 h on 2 CPU cores)
#
# Knobs (environment): EPISODES (400 per dataset), STEPS (2000), MODEL (medium), NOISE (0.3), BETA (0.5),
# CHECK_EPISODES (20 per group), PY (.venv/bin/python), TRAIN_EXTRA (more overrides for every training,
# e.g. the one-step context "model.context_length=49 training.sequence_length=49 training.batch_size=128").
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-outputs/corrective}
EPISODES=${EPISODES:-400}
STEPS=${STEPS:-2000}
read -r -a TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"
MODEL=${MODEL:-medium}
NOISE=${NOISE:-0.3}
BETA=${BETA:-0.5}
CHECK_EPISODES=${CHECK_EPISODES:-20}
PY=${PY:-.venv/bin/python}
export MUJOCO_GL=${MUJOCO_GL:-egl}
DATA=$(realpath -m "$WORK/data")
RUNS=$(realpath -m "$WORK/runs")
gato() { "$PY" -m gato_ros.cli "$@"; }
state=(+experiment=state_policy "training.data.root=$DATA")

collect() {  # name first_seed [overrides...]
  local name=$1 seed=$2
  shift 2
  gato collect "${state[@]}" collection.episodes="$EPISODES" collection.first_seed="$seed" \
    collection.out_dir="$DATA/$name" collection.progress=false "$@"
}

train() {  # name [mixture overrides...]
  local name=$1
  shift
  if [ -f "$RUNS/$name/checkpoints/latest" ] && grep -q "step_$(printf %07d "$STEPS")" "$RUNS/$name/checkpoints/latest"; then
    echo "train $name: done"
    return
  fi
  gato train "${state[@]}" model="$MODEL" training.steps="$STEPS" training.out_dir="$RUNS/$name" \
    training.resume=auto training.progress=false training.data.mixture.rgb_stacking_sim_state.path=bc ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"} "$@"
}

source_of() {  # name path successful_only
  echo "+training.data.mixture.$1.path=$2" "+training.data.mixture.$1.weight=1.0" \
    "+training.data.mixture.$1.successful_only=$3"
}

# 1. data: clean expert demonstrations (successful ones), and DART: expert + noise executed, clean labels
collect bc 100000
collect dart 200000 collection.noise_scale="$NOISE"
# 2. behaviour cloning
train bc
# 3. DAgger round 1: the BC policy drives (the expert's action executed with probability BETA), every
#    visited state labelled by the expert; failed episodes are written and (below) trained on, as DAgger
#    prescribes, though for this project's one-step students they cost success (policies/default/README.md,
#    "Failed DAgger episodes hurt these students"): compare with successful_only=true
collect dagger1 300000 collection.policy="$RUNS/bc/checkpoints/best" collection.beta="$BETA" \
  collection.round=1 collection.keep_failed=true
# 4. the same recipe on more corrective data
# shellcheck disable=SC2046
train bc_dart $(source_of dart dart true)
# shellcheck disable=SC2046
train bc_dart_dagger1 $(source_of dart dart true) $(source_of dagger1 dagger1 false)
# 5. one table, the same seeds for every row (in-process; `gato-ros eval` gives the ROS numbers)
gato check "${state[@]}" \
  "check.checkpoints=[$RUNS/bc/checkpoints/best,$RUNS/bc_dart/checkpoints/best,$RUNS/bc_dart_dagger1/checkpoints/best]" \
  check.out_dir="$WORK/check" evaluation.baselines=[expert] "evaluation.groups=[1,2,3,4,5,train]" \
  evaluation.episodes_per_group="$CHECK_EPISODES"
