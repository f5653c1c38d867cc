#!/usr/bin/env bash
# Runs one experiment on a Cloud TPU pod slice with TPUStrategy.
# Usage: TPU_NAME=... BUCKET=gs://... launch/tpu_pod.sh EXPERIMENT SLICE_GIN [extra flags]
set -euo pipefail
experiment=${1:?experiment name, e.g. effnet_b5_lars_65k}
slice_gin=${2:?slice gin file, e.g. gin/tpu_v3_1024_65k.gin}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${BUCKET:?set BUCKET (gs://...)}"
data=${DATA:-$BUCKET/imagenet}
cd "$(dirname "$0")/.."
exec python train.py \
  --experiment="$experiment" --mode=train_and_eval \
  --tpu="$TPU_NAME" \
  --model_dir="$BUCKET/runs/$experiment-$(date +%Y%m%d-%H%M%S)" \
  --gin_file="$slice_gin" \
  --params_override="task.train_data.input_path=$data/train-*,task.validation_data.input_path=$data/validation-*" \
  "$@"
