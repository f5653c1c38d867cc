"""Launchers for clusters: Cloud TPU VM slices and multi-host GPU clusters.

  python -m launch.tpu_vm --experiment=effnet_b5_lars_65k --tpu=NAME \
      --bucket=gs://BUCKET --dry_run
  python -m launch.gpu_cluster --experiment=effnet_b2_lars_16k \
      --hosts=h1,h2,h3,h4 --gpus_per_host=8 --model_dir=/shared/runs/b2 \
      --dry_run

Each launcher turns its flags into an ordered list of shell commands
(`launch.commands`), prints them with --dry_run, or runs them. Training
itself is `train.py` on TensorFlow's own engine: TPUStrategy on a slice,
MultiWorkerMirroredStrategy on GPU hosts. See launch/README.md.
"""
