r"""Runs an experiment on a multi-host GPU cluster, over SSH or under Slurm.

  python -m launch.gpu_cluster --experiment=effnet_b2_lars_16k \
      --hosts=h1,h2,h3,h4 --gpus_per_host=8 --model_dir=/shared/runs/b2 \
      --data=/shared/imagenet [--dry_run]
  python -m launch.gpu_cluster --slurm --nodes=4 --gpus_per_host=8 ... \
      [--dry_run]

One train.py process per host, under Model Garden's
MultiWorkerMirroredStrategy (`runtime.distribution_strategy =
multi_worker_mirrored`) with NCCL all-reduce (`runtime.all_reduce_alg =
nccl`) across all GPUs of all hosts. Each process gets TF_CONFIG with the
same cluster and its own index (`launch.tf_config`); worker 0 is the chief.

SSH: the launcher starts the processes together (`ssh HOST 'cd WORKDIR &&
TF_CONFIG=... python3 train.py ...'`), prefixes their output with the
worker number and fails if any exits non-zero. The project must be installed
at --workdir on every host, and --model_dir and --data must be the same
path for every host (a shared filesystem or gs://).

Slurm: it writes an sbatch script (one task per node, `srun`; each task
builds its TF_CONFIG from SLURM_JOB_NODELIST and SLURM_PROCID) and submits
it with `sbatch`.

The model_dir is the one given: relaunching the same command resumes from
its latest checkpoint.
"""
import os
import re
import shlex
import sys
from typing import List, Tuple

# TensorFlow's C++ INFO/WARNING lines would bury the one-line errors.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # pylint: disable=g-import-not-at-top

from launch import cli
from launch import tf_config
from launch import train_command
from launch.commands import Command, LaunchError, WriteFile
from official_ext.core import config_overrides

RUNTIME_FIELDS = {'runtime.distribution_strategy': 'multi_worker_mirrored',
                  'runtime.all_reduce_alg': 'nccl'}
DEFAULT_PORT = 2222
_HOST = re.compile(r'(?:[A-Za-z0-9._-]+@)?([A-Za-z0-9][A-Za-z0-9.-]*)'
                   r'(?::(\d{1,5}))?')


def define_flags(values: flags.FlagValues) -> None:
  def string(name, default, help_text):
    flags.DEFINE_string(name, default, help_text, flag_values=values)

  def integer(name, default, help_text):
    flags.DEFINE_integer(name, default, help_text, flag_values=values)

  string('experiment', None, 'Registered experiment, e.g. effnet_b2_lars_16k.')
  string('hosts', None, 'Comma-separated [user@]host[:port] list, worker 0 '
         'first (SSH launch).')
  integer('gpus_per_host', 8, 'GPUs on each host (all of them train).')
  string('model_dir', None, 'Shared by every host: a shared filesystem path '
         'or gs://.')
  string('data', None, 'Dataset directory seen by every host: train-*/'
         'validation-* TFRecords, or a TFDS data_dir with --data_format=tfds.')
  string('data_format', 'tfrecord', 'tfrecord or tfds (imagenet2012).')
  integer('label_offset', None, 'Subtracted from labels (default: the '
          "experiment's; the paper rows read ImageNet's convention of the "
          'source).')
  string('params_override', '', 'Passed on to train.py, after the '
         "launcher's own fields.")
  integer('port', DEFAULT_PORT, 'Port of each worker (hosts without :port).')
  string('workdir', train_command.ROOT,
         'The project checkout on every host (default: this one).')
  string('python', 'python3', 'Python on every host.')
  string('ssh', 'ssh', 'SSH client.')
  flags.DEFINE_bool('slurm', False, 'Write and submit an sbatch script '
                    'instead of SSH.', flag_values=values)
  integer('nodes', None, 'Slurm nodes (one worker each).')
  string('sbatch_script', None, 'Where --slurm writes the script (default '
         'WORKDIR/launch-EXPERIMENT.sbatch).')
  flags.DEFINE_multi_string('sbatch_option', [], 'Extra #SBATCH line, e.g. '
                            '--partition=gpu (repeatable).',
                            flag_values=values)
  cli.define_dry_run(values)


def parse_hosts(hosts: str, port: int) -> List[Tuple[str, str]]:
  """[(ssh destination, host:port for TF_CONFIG)], worker 0 first."""
  workers = []
  for entry in (hosts or '').split(','):
    match = _HOST.fullmatch(entry.strip())
    if not match:
      raise LaunchError(f'--hosts entry {entry!r} is not [user@]host[:port]; '
                        'use e.g. --hosts=gpu1,gpu2:2223')
    destination = entry.strip().rsplit(':', 1)[0] if match.group(2) else (
        entry.strip())
    workers.append((destination, f'{match.group(1)}:{match.group(2) or port}'))
  addresses = [address for _, address in workers]
  duplicate = next((a for a in addresses if addresses.count(a) > 1), None)
  if duplicate:
    raise LaunchError(f'--hosts names worker {duplicate} twice; give each '
                      'worker its own host:port')
  return workers


def _check(values) -> int:
  """Checks the flags; returns the number of workers."""
  for name in ('experiment', 'model_dir', 'data'):
    if not getattr(values, name):
      raise LaunchError(f'--{name} is required')
  if values.gpus_per_host < 1:
    raise LaunchError(f'--gpus_per_host={values.gpus_per_host} must be >= 1')
  if not 0 < values.port < 65536:
    raise LaunchError(f'--port={values.port} is not a port (1..65535)')
  if values.slurm:
    if values.hosts:
      raise LaunchError('--hosts and --slurm exclude each other: Slurm '
                        'chooses the hosts; pass --nodes')
    if not values.nodes or values.nodes < 1:
      raise LaunchError(f'--slurm needs --nodes >= 1, got {values.nodes}')
    return values.nodes
  if not values.hosts:
    raise LaunchError('--hosts is required (or --slurm with --nodes)')
  return len(parse_hosts(values.hosts, values.port))


def checked_train_argv(values, num_workers: int) -> List[str]:
  """train.py's argv, resolved here for the cluster's replica count."""
  override = train_command.combined_override(
      {**RUNTIME_FIELDS,
       **train_command.data_overrides(values.data, values.data_format,
                                      values.label_offset)},
      values.params_override)
  params = train_command.resolve(values.experiment, (), override)
  replicas = num_workers * values.gpus_per_host
  try:
    config_overrides.resolve_for_replicas(params, replicas)
  except config_overrides.ConfigError as e:
    raise LaunchError(f'{num_workers} hosts x {values.gpus_per_host} GPUs: '
                      f'{e}') from e
  return train_command.train_argv(values.python, values.experiment,
                                  values.model_dir,
                                  params_override=override)


def ssh_commands(values, train_argv: List[str]) -> List[Command]:
  workers = parse_hosts(values.hosts, values.port)
  cluster = [address for _, address in workers]
  steps = []
  for index, (destination, address) in enumerate(workers):
    remote = (f'cd {train_command.shell([values.workdir])} && '
              + train_command.shell(
                  train_argv, {'TF_CONFIG': tf_config.tf_config(cluster,
                                                                index)}))
    role = 'chief' if index == 0 else 'worker'
    steps.append(Command((*shlex.split(values.ssh), '-o', 'BatchMode=yes',
                          destination, remote),
                         f'worker {index} ({role}) on {address}',
                         concurrent=True))
  return steps


def sbatch_script(values, train_argv: List[str]) -> str:
  job = (f'export TF_CONFIG="$({values.python} -m launch.tf_config --slurm '
         f'--port={values.port})" && exec {train_command.shell(train_argv)}')
  lines = ['#!/bin/bash',
           f'#SBATCH --job-name={values.experiment}',
           f'#SBATCH --nodes={values.nodes}',
           '#SBATCH --ntasks-per-node=1',
           f'#SBATCH --gpus-per-node={values.gpus_per_host}',
           f'#SBATCH --output={values.experiment}-%j.log',
           *(f'#SBATCH {option}' for option in values.sbatch_option),
           '# One train.py per node under MultiWorkerMirroredStrategy; each',
           '# task builds its TF_CONFIG from the Slurm job environment.',
           'set -euo pipefail',
           f'cd {train_command.shell([values.workdir])}',
           f'srun --kill-on-bad-exit=1 bash -c {train_command.shell([job])}']
  return '\n'.join(lines) + '\n'


def plan(values) -> List[Command]:
  num_workers = _check(values)
  train_argv = checked_train_argv(values, num_workers)
  if not values.slurm:
    return ssh_commands(values, train_argv)
  script = values.sbatch_script or (
      f'{values.workdir.rstrip("/")}/launch-{values.experiment}.sbatch')
  return [WriteFile(script, sbatch_script(values, train_argv),
                    'write the Slurm job script'),
          Command(('sbatch', script), 'submit it')]


def main(argv=None) -> int:
  return cli.main(sys.argv if argv is None else argv, define_flags, plan,
                  doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
