#!/usr/bin/env bash
# The GPU check of the engine and the method study, as one script for a lent GPU machine
# (see the README's "Studies"). Prints what it does; writes its results under $OUT.
#   carry: .whl (pydantic wheels for a machine without them), gpu/cifar10-jpeg.tar.gz
#   bash benchmarks/gpu_study.sh [TEACHER_EPOCHS] [STUDENT_EPOCHS] [SEEDS] [STUDY_SECONDS] [LOSSES]
# Within 15 minutes of an H100/H200: the engine benchmark of both presets (core and paper, with the
# gathered strong view) at batch 64 and 128, then the CIFAR-10 ablation (`study --ablate cskd`: kd,
# kd-ce1 (the label-weight control), cskd-fixed-t (the CSWT control), cskd-core, cskd-paper), 60
# epochs. Cells run seed by seed, so whatever the time box lets finish is whole pairs of every
# arm: the controls are among the first cells, not the last. LOSSES=kd,cskd-core runs a plain
# loss comparison instead. Cells are cached: a second run on the same machine finishes the study.
set -u
TEACHER_EPOCHS=${1:-20}
STUDENT_EPOCHS=${2:-60}
SEEDS=${3:-3}
STUDY_SECONDS=${4:-480}
LOSSES=${5:-ablate}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
if [ ! -d /tmp/cifar10-jpeg/train ]; then
  mkdir -p /tmp/cifar10-jpeg && tar -xzf gpu/cifar10-jpeg.tar.gz -C /tmp/cifar10-jpeg
fi
if [ ! -f "$OUT/engine.json" ] && [ ! -f /tmp/engine.json ]; then
  python3 benchmarks/engine.py --device cuda --out /tmp/engine.json --steps 200 --batches 64 128 2>&1 | tail -12
fi
cp /tmp/engine.json "$OUT/engine.json" 2>/dev/null
start=$(date +%s)
if [ "$LOSSES" = ablate ]; then ARMS=(--ablate cskd); else ARMS=(--losses "$LOSSES"); fi
timeout -s INT "$STUDY_SECONDS" python3 -m pipeline.cli study -m cifar10-jpeg "${ARMS[@]}" --seeds "$SEEDS" \
  -o data.root=/tmp/cifar10-jpeg -o "export.targets=[onnx]" \
  -o teacher.train.epochs="$TEACHER_EPOCHS" -o student.train.epochs="$STUDENT_EPOCHS" 2>&1 | tee -a "$OUT/study.log"
echo "study command: rc ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s" | tee -a "$OUT/study.log"
cp reports/cifar10-jpeg/study.json reports/cifar10-jpeg/study.html "$OUT/" 2>/dev/null
ls .cskd/logs 2>/dev/null | tail -3
tail -c 200000 "$(ls -t .cskd/logs/* | head -1)" > "$OUT/last-run.log" 2>/dev/null
exit 0
