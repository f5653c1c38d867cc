"""launch.tpu_vm: the commands a Cloud TPU launch runs, from its dry run.

Nothing here reaches a cloud: the dry run prints the plan, and the plan for
a known slice state is built directly.
"""
import shlex
import subprocess
import sys

import pytest

from launch import commands
from launch import slices
from launch import tpu_vm

BASE = ['prog', '--experiment=effnet_b5_lars_65k', '--tpu=effnet-pod',
        '--bucket=gs://my-bucket', '--zone=europe-west4-a']


def dry_run(capsys, *extra):
  code = tpu_vm.main(BASE + list(extra) + ['--dry_run'])
  out, err = capsys.readouterr()
  assert code == 0, err
  return [l for l in out.splitlines() if not l.startswith('# ')]


def error_of(capsys, argv):
  code = tpu_vm.main(argv)
  out, err = capsys.readouterr()
  assert code == 2 and not out, (code, out, err)
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  return lines[0]


def remote_command(line):
  """The --command=... of a `gcloud ... ssh` line."""
  argv = shlex.split(line)
  return next(a for a in argv if a.startswith('--command='))[
      len('--command='):]


def train_argv(start_line):
  """train.py's argv inside the start command on worker 0."""
  command = remote_command(start_line)
  lexer = shlex.shlex(command[command.index('python3 train.py'):],
                      posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  words = list(lexer)
  return words[:words.index(';')]


def test_dry_run_creates_a_v3_1024_installs_everywhere_and_trains(capsys):
  lines = dry_run(capsys)
  gcloud = 'gcloud compute tpus tpu-vm'
  assert lines[0].startswith(f'{gcloud} describe effnet-pod ')
  create = shlex.split(lines[1])
  assert create[:6] == shlex.split(f'{gcloud} create effnet-pod')
  assert '--accelerator-type=v3-1024' in create
  assert '--version=tpu-vm-tf-2.20.0-pod-pjrt' in create
  assert '--zone=europe-west4-a' in create
  assert lines[2].startswith('git -C ') and ' archive ' in lines[2]
  scp = shlex.split(lines[3])
  assert scp[4] == 'scp' and '--worker=all' in scp
  install = shlex.split(lines[4])
  assert install[4:6] == ['ssh', 'effnet-pod'] and '--worker=all' in install
  assert 'pip install' in remote_command(lines[4])
  start = shlex.split(lines[5])
  assert '--worker=0' in start
  argv = train_argv(lines[5])
  assert argv[:2] == ['python3', 'train.py']
  for flag in ('--experiment=effnet_b5_lars_65k', '--mode=train_and_eval',
               '--tpu=effnet-pod', '--gin_file=gin/tpu_v3_1024_65k.gin',
               '--model_dir=gs://my-bucket/runs/effnet_b5_lars_65k'):
    assert flag in argv, argv
  override = next(a for a in argv if a.startswith('--params_override='))
  assert 'task.train_data.input_path=gs://my-bucket/imagenet/train-*' in (
      override)
  assert 'tail ' in remote_command(lines[6])
  assert len(lines) == 7


def test_two_launches_of_one_experiment_and_bucket_share_the_model_dir(
    capsys):
  first = train_argv(dry_run(capsys)[5])
  again = train_argv(dry_run(capsys, '--slice=v3-1024', '--spot')[5])
  model_dirs = {a for a in first + again if a.startswith('--model_dir=')}
  assert model_dirs == {'--model_dir=gs://my-bucket/runs/effnet_b5_lars_65k'}


def test_the_experiment_picks_its_slice_gin_file(capsys):
  lines = dry_run(capsys, '--experiment=effnet_b2_rmsprop_4k')
  assert '--accelerator-type=v3-128' in lines[1]
  assert '--gin_file=gin/tpu_v3_128.gin' in train_argv(lines[5])


def test_a_slice_of_another_size_needs_the_tpu_cores_override(capsys):
  line = error_of(capsys, BASE + ['--slice=v3-512', '--dry_run'])
  assert '--params_override=runtime.tpu_cores=512' in line
  lines = dry_run(capsys, '--slice=v3-512',
                  '--params_override=runtime.tpu_cores=512')
  assert '--accelerator-type=v3-512' in lines[1]
  argv = train_argv(lines[5])
  assert '--gin_file=gin/tpu_v3_1024_65k.gin' in argv
  assert any(a.startswith('--params_override=') and
             a.endswith(',runtime.tpu_cores=512') for a in argv), argv


def test_v4_slices_count_one_replica_per_chip(capsys):
  lines = dry_run(capsys, '--slice=v4-2048')
  assert '--accelerator-type=v4-2048' in lines[1]
  assert slices.parse('v4-2048').replicas == 1024
  assert slices.parse('v4-8').hosts == 1 and not slices.parse('v4-8').is_pod


def test_a_one_host_slice_trains_with_the_local_tpu(capsys):
  lines = dry_run(capsys, '--slice=v3-8', '--params_override='
                  'runtime.tpu_cores=8')
  assert '--version=tpu-vm-tf-2.20.0-pjrt' in lines[1]
  command = remote_command(lines[5])
  assert 'TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so' in command
  assert '--tpu=local' in command


@pytest.mark.parametrize('flag, fragment', [
    ('--experiment=effnet_b5_lars_64k',
     "unknown experiment 'effnet_b5_lars_64k'"),
    ('--slice=v3-1000', "--slice='v3-1000' is not a TPU slice type"),
    ('--slice=v5-8', "--slice='v5-8' is not a TPU slice type"),
    ('--bucket=my-bucket', "--bucket='my-bucket' is not a gs:// location"),
    ('--data=/data/imagenet', "--data='/data/imagenet' is not a gs://"),
    ('--tpu=Effnet_Pod', "--tpu='Effnet_Pod' is not a TPU name"),
    ('--experiment=effnet_b0_digits', 'is not a TPU slice experiment'),
    ('--params_override=task.train_data.input_path=gs://x/y',
     'task.train_data.input_path, which the launcher sets'),
    ('--no_such_flag', 'no_such_flag'),
])
def test_bad_flags_are_one_line_errors(capsys, flag, fragment):
  line = error_of(capsys, BASE + [flag, '--dry_run'])
  assert fragment in line, line


def test_reusing_a_slice_skips_create_and_refuses_another_type():
  values = tpu_vm_flags(BASE)
  ready = tpu_vm.plan(values, ('v3-1024', 'READY'), known=True)
  texts = [c.text for c in ready]
  assert not any(' describe ' in t or ' create ' in t for t in texts)
  preempted = tpu_vm.plan(values, ('v3-1024', 'PREEMPTED'), known=True)
  assert ' delete ' in preempted[0].text and ' create ' in preempted[1].text
  absent = tpu_vm.plan(values, None, known=True)
  assert ' create ' in absent[0].text
  with pytest.raises(commands.LaunchError, match='exists as a v3-512 slice'):
    tpu_vm.plan(values, ('v3-512', 'READY'), known=True)
  assert tpu_vm.parse_describe(0, 'v3-1024\tREADY\n') == ('v3-1024', 'READY')
  assert tpu_vm.parse_describe(1, '') is None


def test_delete_and_logs_are_single_commands(capsys):
  code = tpu_vm.main(['prog', '--tpu=effnet-pod', '--delete', '--dry_run'])
  out = capsys.readouterr().out.splitlines()
  assert code == 0 and out[1] == (
      'gcloud compute tpus tpu-vm delete effnet-pod --quiet')
  lines = dry_run(capsys, '--logs')
  assert len(lines) == 1 and 'tail ' in remote_command(lines[0])


def test_without_dry_run_a_failing_command_is_one_line(monkeypatch, capsys):
  # describe finds the slice; the first command run (git archive) fails.
  monkeypatch.setattr(commands, 'capture',
                      lambda argv: (0, 'v3-1024 READY'))
  ran = []

  def fake_run(argv, check):
    ran.append(argv)
    return subprocess.CompletedProcess(argv, 128)

  monkeypatch.setattr(commands.subprocess, 'run', fake_run)
  code = tpu_vm.main(BASE)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(ran) == 1 and ran[0][0] == 'git'
  assert len(err) == 1 and err[0].startswith(
      'error: command exited with status 128: git -C ')


def test_the_module_runs_as_a_command():
  result = subprocess.run(
      [sys.executable, '-m', 'launch.tpu_vm', '--tpu=effnet-pod',
       '--bucket=gs://my-bucket', '--experiment=nope', '--dry_run'],
      cwd=tpu_vm.train_command.ROOT, capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 2 and not result.stdout
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "error: unknown experiment 'nope'"), result.stderr


def tpu_vm_flags(argv):
  from launch import cli  # pylint: disable=g-import-not-at-top
  return cli.parse(argv, tpu_vm.define_flags)


def test_help_lists_the_flags(capsys):
  assert tpu_vm.main(['prog', '--help']) == 0
  out = capsys.readouterr().out
  assert '--slice' in out and '--bucket' in out and '--dry_run' in out


def test_a_missing_gcloud_is_one_line(monkeypatch, capsys, tmp_path):
  monkeypatch.setenv('PATH', str(tmp_path))
  code = tpu_vm.main(BASE)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1, err
  assert err[0].startswith('error: cannot run gcloud'), err


def test_labels_follow_the_experiment_unless_an_offset_is_given(capsys):
  def override(lines):
    return next(a for a in train_argv(lines[5])
                if a.startswith('--params_override='))
  assert 'label_offset' not in override(dry_run(capsys))
  tfds = override(dry_run(capsys, '--data=gs://my-bucket/tfds',
                          '--data_format=tfds', '--label_offset=0'))
  for field in ('task.train_data.tfds_name=imagenet2012',
                'task.validation_data.tfds_split=validation',
                'task.train_data.tfds_data_dir=gs://my-bucket/tfds',
                'task.train_data.label_offset=0'):
    assert field in tfds, tfds
