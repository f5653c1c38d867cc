#!/usr/bin/env bash
# Starts one worker of a MultiWorkerMirroredStrategy job (GPU cluster).
# Usage: WORKERS=h1:2222,h2:2222 INDEX=0 DATA=/data/imagenet \
#        launch/gpu_cluster.sh EXPERIMENT MODEL_DIR [extra flags]
set -euo pipefail
experiment=${1:?experiment name}
model_dir=${2:?model_dir shared by all workers}
shift 2
: "${WORKERS:?comma-separated host:port list}" "${INDEX:?this worker index}"
: "${DATA:?directory with train-* and validation-* TFRecords}"
workers_json=$(python -c 'import json,sys; print(json.dumps(sys.argv[1].split(",")))' "$WORKERS")
export TF_CONFIG="{\"cluster\": {\"worker\": $workers_json}, \"task\": {\"type\": \"worker\", \"index\": $INDEX}}"
cd "$(dirname "$0")/.."
exec python train.py \
  --experiment="$experiment" --mode=train_and_eval --model_dir="$model_dir" \
  --params_override="runtime.distribution_strategy=multi_worker_mirrored,runtime.num_gpus=${NUM_GPUS:-8},task.train_data.input_path=$DATA/train-*,task.validation_data.input_path=$DATA/validation-*" \
  "$@"
