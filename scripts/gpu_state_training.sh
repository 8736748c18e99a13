#!/usr/bin/env bash
# The state policy (+experiment=state_policy, model=medium, the bc + dart recipe of policies/default's card)
# trained on a lent GPU inside one device call (issue 10, item 5): an 8x batch (1,024 one-step windows),
# lr 1.2e-3 and a 200-step warm-up (2x each, below the sqrt(8) rule for a run from scratch), bf16 autocast
# (training.precision=auto), batches built by training.data.workers processes (one core builds a batch of
# 1,024 windows in ~0.2 s: slower than the GPU trains on it), no in-training success check (no MuJoCo on the
# GPU machine; check the returned checkpoints here with `gato-ros check`). A 40-step probe measures steps/s;
# the run then takes as many steps as fit BUDGET_S (at most 40,000), a checkpoint at half of them.
#
#   bash scripts/gpu_state_training.sh [BUDGET_S] [OUT_DIR]        (defaults: 240 s of training, $OUT)
#
# It reads .gpu_carry/ (ignored by git, named in the device call's `carry`), made here beforehand:
#   mkdir -p .gpu_carry/whl && tar cJf .gpu_carry/bcdart.tar.xz -C DATA bc dart
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu_carry/whl \
#     hydra-core==1.3.2 omegaconf==2.3.1 packaging==26.4
#   pip wheel --no-deps -w .gpu_carry/whl antlr4-python3-runtime==4.9.3   # sdist only on PyPI; pure Python
# OUT_DIR gets final/ and mid/ (model.safetensors in 15 MiB parts + config.json) and run.tgz (log, summary):
#   mkdir -p CKPT && cat final/model.safetensors.part* > CKPT/model.safetensors && cp final/config.json CKPT/
# GPU_TRAIN_DEVICE=cpu GPU_TRAIN_BATCH=32 rehearses it on a CPU.
set -euo pipefail

BUDGET_S=${1:-240}
OUT_DIR=${2:-${OUT:?give OUT_DIR or set OUT}}
PY=${GPU_TRAIN_PYTHON:-python3}
DEVICE=${GPU_TRAIN_DEVICE:-cuda}
BATCH=${GPU_TRAIN_BATCH:-1024}
cores=$(nproc)
WORKERS=${GPU_TRAIN_WORKERS:-$((cores > 16 ? 14 : (cores > 2 ? cores - 2 : 1)))}
RUN=/tmp/gpu_state_run
mkdir -p "$OUT_DIR"

"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu_carry/whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
if [[ ! -d /tmp/data/bc ]]; then
  "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    .gpu_carry/bcdart.tar.xz /tmp/data
fi

recipe=(
  +experiment=state_policy model=medium training.data.root=/tmp/data
  training.data.mixture.rgb_stacking_sim_state.path=bc
  +training.data.mixture.dart.path=dart +training.data.mixture.dart.weight=1.0
  +training.data.mixture.dart.successful_only=true
  "training.device=$DEVICE" training.precision=auto "training.batch_size=$BATCH" training.lr=1.2e-3
  "training.data.workers=$WORKERS" training.num_threads=2 training.success_check.every=0
  training.plot=false training.progress=false
)
rm -rf /tmp/gpu_state_probe "$RUN"
"$PY" -m gato_ros.cli train "${recipe[@]}" training.steps=40 training.warmup_steps=1 training.log_every=1 \
  training.checkpoint_every=40 training.out_dir=/tmp/gpu_state_probe >/tmp/gpu_state_probe.txt 2>&1 ||
  { tail -30 /tmp/gpu_state_probe.txt; exit 1; }
steps=$("$PY" - "$BUDGET_S" <<'PY'
import json, sys
times = [json.loads(line)["time"] for line in open("/tmp/gpu_state_probe/log.jsonl")]
rate = 20 / (times[-1] - times[-21])  # the last 20 of 40 steps: workers warm, kernels selected
steps = min(40000, int(0.9 * float(sys.argv[1]) * rate)) // 2 * 2
print(max(steps, 2))
print(f"probe: {rate:.2f} steps/s -> {max(steps, 2)} steps", file=sys.stderr)
PY
)
start=$SECONDS
"$PY" -m gato_ros.cli train "${recipe[@]}" "training.steps=$steps" "training.warmup_steps=$((steps / 10 < 200 ? steps / 10 + 1 : 200))" \
  "training.checkpoint_every=$((steps / 2))" training.keep_checkpoints=2 training.log_every=10 \
  "training.out_dir=$RUN" 2>&1 | tail -5
echo "trained $steps steps in $((SECONDS - start)) s on $DEVICE, batch $BATCH, $WORKERS batch workers" |
  tee "$RUN/summary.txt"

for checkpoint in "$RUN"/checkpoints/step_*; do
  name=$([[ $checkpoint == *"$(printf '%07d' "$steps")" ]] && echo final || echo mid)
  mkdir -p "$OUT_DIR/$name"
  split -b 15M -d "$checkpoint/model.safetensors" "$OUT_DIR/$name/model.safetensors.part"
  cp "$checkpoint/config.json" "$OUT_DIR/$name/"
  sha256sum "$checkpoint/model.safetensors" | sed "s|$checkpoint|$name|" >>"$RUN/summary.txt"
done
tar czf "$OUT_DIR/run.tgz" -C "$RUN" log.jsonl summary.txt
find "$OUT_DIR" -type f -printf '%s\t%P\n' | sort -k2
