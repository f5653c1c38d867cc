r"""Runs an experiment on a Cloud TPU VM slice, resumably.

  python -m launch.tpu_vm --experiment=effnet_b5_lars_65k --tpu=NAME \
      --bucket=gs://BUCKET [--slice=v3-1024] [--zone=ZONE] [--project=P] \
      [--data=gs://BUCKET/imagenet] [--dry_run]
  python -m launch.tpu_vm --tpu=NAME --logs      # stream the log again
  python -m launch.tpu_vm --tpu=NAME --delete    # delete the slice

In order: find the slice (`gcloud compute tpus tpu-vm describe`) and create
it if absent (a preempted one is deleted and recreated); ship this checkout
(`git archive HEAD`) to every worker and `pip install -e` it there
(`--worker=all`); start train.py on worker 0 in the background; stream its
log until it exits; with --delete_when_done, delete the slice.

On a pod slice TensorFlow's TPUStrategy has a single client: train.py runs on
worker 0 and drives every core of the slice through the TPU runtime's
servers on all workers (TPU_LOAD_LIBRARY=0 keeps that client off worker 0's
chips); each worker's CPU runs its share of the input pipeline. A one-host
slice (v3-8, v4-8) trains with --tpu=local.

The model_dir is gs://BUCKET/runs/<--run_name, default the experiment>: the
same on every launch, so relaunching the same command after a preemption
resumes from the latest checkpoint. A launch while train.py still runs on
worker 0 starts nothing and streams its log.
"""
import dataclasses
import os
import re
import sys
import tempfile
from typing import List, Optional, Tuple

# TensorFlow's C++ INFO/WARNING lines would bury the one-line errors.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from launch import cli
from launch import commands
from launch import slices
from launch import train_command
from launch.commands import Command, LaunchError
from official_ext.core import tpu_slice

WORKDIR = 'effnet_supercomputer'
REMOTE_PYTHON = 'python3'
# A slice in these states is gone for good: delete it and create it anew.
LOST_STATES = ('PREEMPTED', 'TERMINATED')
USABLE_STATES = ('READY', 'CREATING', 'STARTING', 'RESTARTING', 'REPAIRING')
_TPU_NAME = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')
_BUCKET = re.compile(r'gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?')
# TensorFlow's PJRT TPU plugin on a one-host slice.
SINGLE_HOST_ENV = {'NEXT_PLUGGABLE_DEVICE_USE_C_API': 'true',
                   'TF_PLUGGABLE_DEVICE_LIBRARY_PATH': '/lib/libtpu.so'}
POD_ENV = {'TPU_LOAD_LIBRARY': '0'}


def define_flags(values: flags.FlagValues) -> None:
  def string(name, default, help_text):
    flags.DEFINE_string(name, default, help_text, flag_values=values)

  def boolean(name, help_text):
    flags.DEFINE_bool(name, False, help_text, flag_values=values)

  string('experiment', None, 'Registered experiment, e.g. effnet_b5_lars_65k.')
  string('tpu', None, 'Name of the TPU VM slice to create or reuse.')
  string('bucket', None, 'gs://BUCKET holding runs/ (and by default '
         'imagenet/).')
  string('slice', None, "Accelerator type, e.g. v3-1024; default: the "
         "experiment's runtime.tpu_cores on v3.")
  string('zone', None, 'Zone of the slice (default: gcloud\'s compute/zone).')
  string('project', None, 'Cloud project (default: gcloud\'s).')
  string('data', None, 'gs:// directory of the dataset (default '
         'BUCKET/imagenet): train-*/validation-* TFRecords, or a TFDS '
         'data_dir with --data_format=tfds.')
  string('data_format', 'tfrecord', 'tfrecord or tfds (imagenet2012).')
  flags.DEFINE_integer('label_offset', None, 'Subtracted from labels '
                       "(default: the experiment's; the paper rows read "
                       'ImageNet\'s convention of the source).',
                       flag_values=values)
  string('params_override', '', 'Passed on to train.py, after the '
         "launcher's own fields, e.g. runtime.tpu_cores=512.")
  string('run_name', None, 'Leaf of the model_dir gs://BUCKET/runs/RUN_NAME '
         '(default: the experiment).')
  string('runtime_version', None, 'TPU VM image (default tpu-vm-tf-'
         '<installed TF>[-pod]-pjrt).')
  boolean('spot', 'Create the slice as a Spot VM (preemptible).')
  boolean('logs', 'Only stream the log of the run on worker 0.')
  boolean('delete', 'Only delete the slice.')
  boolean('delete_when_done', 'Delete the slice once train.py has exited.')
  cli.define_dry_run(values)


def _gcloud(verb: str, values, *args: str, named: bool = True
            ) -> Tuple[str, ...]:
  """`gcloud compute tpus tpu-vm VERB [TPU] ARGS` in the zone and project."""
  argv = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb,
          *((values.tpu,) if named else ()), *args]
  if values.zone:
    argv.append(f'--zone={values.zone}')
  if values.project:
    argv.append(f'--project={values.project}')
  return tuple(argv)


def _ssh(values, worker: str, remote_command: str, note: str) -> Command:
  return Command(_gcloud('ssh', values, f'--worker={worker}',
                         f'--command={remote_command}'), note)


def _check_names(values) -> None:
  if not values.tpu:
    raise LaunchError('--tpu is required: the name of the TPU VM slice')
  if not _TPU_NAME.fullmatch(values.tpu):
    raise LaunchError(f'--tpu={values.tpu!r} is not a TPU name; use lowercase '
                      'letters, digits and hyphens, starting with a letter')
  for name in ('bucket', 'data'):
    value = getattr(values, name)
    if value is not None and not _BUCKET.fullmatch(value):
      raise LaunchError(
          f'--{name}={value!r} is not a gs:// location; use gs://BUCKET[/path]'
          ' with a bucket name of 3-222 lowercase letters, digits, -, _ or . '
          '(every TPU worker reads it)')


def run_files(run_name: str) -> dict:
  """Files of the run on worker 0, in its home directory."""
  return {suffix: f'train-{run_name}.{suffix}' for suffix in ('log', 'pid',
                                                              'rc')}


def _running(files) -> str:
  """Shell test: train.py of this run is alive on this worker."""
  return f'kill -0 "$(cat {files["pid"]} 2>/dev/null)" 2>/dev/null'


def describe_command(values) -> Command:
  return Command(_gcloud('describe', values,
                         '--format=value(acceleratorType,state)'),
                 'find the slice: its type and state')


def parse_describe(returncode: int, stdout: str) -> Optional[Tuple[str, str]]:
  """(accelerator type, state) from describe, or None if there is none."""
  fields = stdout.split()
  if returncode or len(fields) < 2:
    return None
  return fields[0], fields[1]


def slice_commands(values, wanted: slices.SliceType,
                   found: Optional[Tuple[str, str]],
                   known: bool) -> List[Command]:
  """Create, recreate or reuse the slice. `known`: describe has run."""
  create = Command(
      _gcloud('create', values, f'--accelerator-type={wanted.name}',
              f'--version={runtime_version(values, wanted)}',
              *(('--spot',) if values.spot else ())),
      f'create the {wanted.name} slice ({wanted.hosts} worker'
      f'{"s" if wanted.hosts > 1 else ""})')
  delete = Command(_gcloud('delete', values, '--quiet'), 'delete the slice')
  if not known:
    return [dataclasses.replace(create, condition=(
        'only if describe finds no slice; one found PREEMPTED or TERMINATED '
        'is deleted first, one of another type is refused'))]
  if found is None:
    return [create]
  accelerator, state = found
  if accelerator != wanted.name:
    raise LaunchError(
        f'TPU {values.tpu!r} exists as a {accelerator} slice, not '
        f'{wanted.name}; pass --slice={accelerator}, another --tpu, or delete '
        'it with --delete')
  if state in LOST_STATES:
    return [dataclasses.replace(delete, note=f'delete the {state} slice'),
            create]
  if state == 'STOPPED':
    return [Command(_gcloud('start', values), 'start the stopped slice')]
  if state not in USABLE_STATES:
    raise LaunchError(f'TPU {values.tpu!r} is {state}; wait for it to settle '
                      'and launch again')
  return []


def runtime_version(values, wanted: slices.SliceType) -> str:
  return values.runtime_version or wanted.runtime_version(
      tf.__version__.split('-')[0])


def install_commands(values, files) -> List[Command]:
  """Ship `git archive HEAD` of this checkout to every worker, pip install.

  Worker 0 keeps its copy while train.py runs from it; other workers only
  host the TPU runtime's servers.
  """
  if not os.path.exists(os.path.join(train_command.ROOT, '.git')):
    raise LaunchError(f'{train_command.ROOT} is not a git checkout; the '
                      'launcher ships its committed HEAD (git archive)')
  archive_name = f'{WORKDIR}.tar.gz'
  archive = os.path.join(tempfile.gettempdir(), archive_name)
  install = (f'{_running(files)} && echo "train.py is running; install '
             f'skipped" || {{ rm -rf {WORKDIR} && tar -xzf {archive_name} && '
             f'{REMOTE_PYTHON} -m pip install --quiet -e {WORKDIR}; }}')
  return [
      Command(('git', '-C', train_command.ROOT, 'archive', '--format=tar.gz',
               f'--prefix={WORKDIR}/', f'--output={archive}', 'HEAD'),
              'package the committed HEAD of this checkout'),
      Command(_gcloud('scp', values, archive, f'{values.tpu}:{archive_name}',
                      '--worker=all', named=False),
              'copy it to every worker'),
      _ssh(values, 'all', install, 'install the project on every worker'),
  ]


def start_command(values, wanted: slices.SliceType, train_argv: List[str],
                  files) -> Command:
  env = POD_ENV if wanted.is_pod else SINGLE_HOST_ENV
  # A background subshell that ignores SIGHUP outlives the ssh session and
  # records train.py's exit status for the log stream.
  job = (f'( trap "" HUP; cd {WORKDIR} && '
         f'{train_command.shell(train_argv, env)}; echo $? > ~/{files["rc"]} '
         f') >> {files["log"]} 2>&1 < /dev/null & echo $! > {files["pid"]}')
  start = (f'{_running(files)} && echo "train.py is already running" || '
           f'{{ rm -f {files["rc"]}; {job}; }}')
  return _ssh(values, '0', start,
              'start train.py on worker 0 in the background (unless running)')


def stream_command(values, files) -> Command:
  stream = (f'tail --pid="$(cat {files["pid"]})" -n +1 -F {files["log"]} '
            f'2>/dev/null; exit "$(cat {files["rc"]} 2>/dev/null || echo 1)"')
  return _ssh(values, '0', stream,
              "stream the log until train.py exits (exit status: train.py's)")


def plan(values, found: Optional[Tuple[str, str]] = None,
         known: bool = False) -> List[Command]:
  """Every command of this launch, in order.

  `found` is describe's (accelerator type, state) once `known`; for a dry
  run nothing is known and the plan shows describe and a conditional create.
  """
  _check_names(values)
  run_name = values.run_name or values.experiment
  if values.delete:
    return [Command(_gcloud('delete', values, '--quiet'), 'delete the slice')]
  if values.logs:
    if not run_name:
      raise LaunchError('--logs needs --experiment (or --run_name)')
    return [stream_command(values, run_files(run_name))]
  for name in ('experiment', 'bucket'):
    if not getattr(values, name):
      raise LaunchError(f'--{name} is required')
  gin_file = train_command.slice_gin_file(values.experiment)
  default = train_command.resolve(values.experiment, [gin_file])
  wanted = (slices.parse(values.slice) if values.slice
            else slices.for_replicas(default.runtime.tpu_cores))
  data = values.data or f'{values.bucket.rstrip("/")}/imagenet'
  override = train_command.combined_override(
      train_command.data_overrides(data, values.data_format,
                                   values.label_offset),
      values.params_override)
  params = train_command.resolve(values.experiment, [gin_file], override)
  mismatch = tpu_slice.check_cores(
      wanted.replicas, params.runtime.tpu_cores,
      params.task.train_data.global_batch_size)
  if mismatch:
    raise LaunchError(f'--slice={wanted.name}: {mismatch}')
  model_dir = train_command.stable_model_dir(values.bucket, run_name)
  files = run_files(run_name)
  train_argv = train_command.train_argv(
      REMOTE_PYTHON, values.experiment, model_dir, [gin_file], override,
      tpu=values.tpu if wanted.is_pod else 'local')
  steps = [] if known else [describe_command(values)]
  steps += slice_commands(values, wanted, found, known)
  steps += install_commands(values, files)
  steps.append(start_command(values, wanted, train_argv, files))
  steps.append(stream_command(values, files))
  if values.delete_when_done:
    steps.append(Command(_gcloud('delete', values, '--quiet'),
                         'delete the slice (--delete_when_done)'))
  return steps


def launch(values) -> List[Command]:
  if values.dry_run or values.delete or values.logs:
    return plan(values)
  plan(values)  # Every flag checked before the first command runs.
  found = parse_describe(*commands.capture(describe_command(values).argv))
  return plan(values, found, known=True)


def main(argv=None) -> int:
  return cli.main(
      sys.argv if argv is None else argv, define_flags, launch, doc=__doc__,
      interrupted_hint=('train.py goes on on the slice; stream its log again '
                        'with --logs, stop it with --delete'))


if __name__ == '__main__':
  sys.exit(main())
