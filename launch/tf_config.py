"""TF_CONFIG for MultiWorkerMirroredStrategy: from a host list, or from Slurm.

Every worker of a job gets the same cluster (the ordered `host:port` list)
and its own index; worker 0 is the chief, which writes the model_dir.
Model Garden builds the strategy from it (`TFConfigClusterResolver`).

Inside a Slurm job step (one task per node), this prints that task's
TF_CONFIG, with the job's nodes expanded by `scontrol show hostnames`:

  export TF_CONFIG="$(python3 -m launch.tf_config --slurm --port=2222)"
"""
import argparse
import json
import os
import subprocess
import sys
from typing import Callable, List, Mapping, Optional, Sequence


def tf_config(workers: Sequence[str], index: int) -> str:
  """The TF_CONFIG JSON of worker `index` of `workers` (host:port each)."""
  if not 0 <= index < len(workers):
    raise ValueError(f'worker index {index} is not in [0, {len(workers)})')
  return json.dumps({'cluster': {'worker': list(workers)},
                     'task': {'type': 'worker', 'index': index}},
                    separators=(',', ':'))


def _scontrol_hostnames(nodelist: str) -> List[str]:
  result = subprocess.run(['scontrol', 'show', 'hostnames', nodelist],
                          capture_output=True, text=True, check=True)
  return result.stdout.split()


def from_slurm(port: int, env: Optional[Mapping[str, str]] = None,
               hostnames: Callable[[str], List[str]] = _scontrol_hostnames
               ) -> str:
  """This Slurm task's TF_CONFIG: one worker per node of the job."""
  env = os.environ if env is None else env
  missing = [name for name in ('SLURM_JOB_NODELIST', 'SLURM_PROCID')
             if name not in env]
  if missing:
    raise ValueError(f'{", ".join(missing)} not set: run inside a Slurm job '
                     'step (srun)')
  nodes = hostnames(env['SLURM_JOB_NODELIST'])
  return tf_config([f'{node}:{port}' for node in nodes],
                   int(env['SLURM_PROCID']))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--slurm', action='store_true', required=True,
                      help='build it from the Slurm job environment')
  parser.add_argument('--port', type=int, default=2222)
  args = parser.parse_args(argv)
  try:
    print(from_slurm(args.port))
  except (ValueError, OSError, subprocess.CalledProcessError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
