"""launch.gpu_cluster: one train.py per host under MultiWorkerMirroredStrategy.

The dry run is checked command by command; the SSH runner is exercised with
`sh` standing in for ssh, and the Slurm TF_CONFIG with a fake node list.
"""
import json
import shlex

import pytest

from launch import gpu_cluster
from launch import tf_config

HOSTS = 'gpu1,gpu2,gpu3,gpu4'
BASE = ['prog', '--experiment=effnet_b5_lars_65k', f'--hosts={HOSTS}',
        '--gpus_per_host=8', '--model_dir=/shared/runs/b5_65k',
        '--data=/shared/imagenet']


def dry_run(capsys, argv):
  code = gpu_cluster.main(argv + ['--dry_run'])
  out, err = capsys.readouterr()
  assert code == 0, err
  return out.splitlines()


def error_of(capsys, argv):
  code = gpu_cluster.main(argv)
  out, err = capsys.readouterr()
  assert code == 2 and not out, (code, out, err)
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  return lines[0]


def parse_ssh(line):
  """(host, TF_CONFIG, train.py argv) of one worker's ssh command."""
  argv = shlex.split(line)
  assert argv[:3] == ['ssh', '-o', 'BatchMode=yes'], argv
  remote = shlex.split(argv[4])
  assert remote[:3] == ['cd', gpu_cluster.train_command.ROOT, '&&'], remote
  assert remote[3].startswith('TF_CONFIG=')
  return argv[3], json.loads(remote[3][len('TF_CONFIG='):]), remote[4:]


def test_four_hosts_of_eight_gpus_get_one_worker_each(capsys):
  lines = [l for l in dry_run(capsys, BASE) if not l.startswith('# ')]
  assert len(lines) == 4
  workers = [parse_ssh(line) for line in lines]
  assert [host for host, _, _ in workers] == HOSTS.split(',')
  cluster = [f'gpu{i}:2222' for i in range(1, 5)]
  for index, (_, config, argv) in enumerate(workers):
    assert config == {'cluster': {'worker': cluster},
                      'task': {'type': 'worker', 'index': index}}
    assert argv[:4] == ['python3', 'train.py',
                        '--experiment=effnet_b5_lars_65k',
                        '--mode=train_and_eval']
    assert '--model_dir=/shared/runs/b5_65k' in argv
    override = next(a for a in argv if a.startswith('--params_override='))
    for field in ('runtime.distribution_strategy=multi_worker_mirrored',
                  'runtime.all_reduce_alg=nccl',
                  'task.train_data.input_path=/shared/imagenet/train-*',
                  'task.validation_data.input_path=/shared/imagenet/'
                  'validation-*'):
      assert field in override, override
  # Every worker runs the same training command; only TF_CONFIG differs.
  assert len({tuple(argv) for _, _, argv in workers}) == 1


def test_two_launches_name_the_same_model_dir(capsys):
  first = dry_run(capsys, BASE)
  again = dry_run(capsys, BASE)
  assert first == again


def test_slurm_writes_an_sbatch_script_with_one_task_per_node(capsys):
  lines = dry_run(capsys, [a for a in BASE if not a.startswith('--hosts')]
                  + ['--slurm', '--nodes=4', '--sbatch_option=--partition=gpu'])
  text = '\n'.join(lines)
  for fragment in ('#SBATCH --nodes=4', '#SBATCH --ntasks-per-node=1',
                   '#SBATCH --gpus-per-node=8', '#SBATCH --partition=gpu',
                   'srun ', 'launch.tf_config --slurm --port=2222',
                   'runtime.all_reduce_alg=nccl'):
    assert fragment in text, text
  assert lines[-1].startswith('sbatch ') and lines[-1].endswith('.sbatch')


def test_slurm_tf_config_comes_from_the_job_environment():
  env = {'SLURM_JOB_NODELIST': 'node[1-2]', 'SLURM_PROCID': '1'}
  config = json.loads(tf_config.from_slurm(
      2222, env, hostnames=lambda nodelist: ['node1', 'node2']))
  assert config == {'cluster': {'worker': ['node1:2222', 'node2:2222']},
                    'task': {'type': 'worker', 'index': 1}}
  with pytest.raises(ValueError, match='SLURM_PROCID'):
    tf_config.from_slurm(2222, {'SLURM_JOB_NODELIST': 'n1'})


def test_the_launch_refuses_a_batch_that_does_not_split_over_the_gpus(capsys):
  line = error_of(capsys, BASE[:2] + ['--hosts=gpu1,gpu2,gpu3'] + BASE[3:])
  assert '3 hosts x 8 GPUs' in line and 'not divisible by the 24' in line


@pytest.mark.parametrize('flag, fragment', [
    ('--experiment=effnet_b5_lars_64k',
     "unknown experiment 'effnet_b5_lars_64k'"),
    ('--hosts=gpu1,gpu1', 'names worker gpu1:2222 twice'),
    ('--hosts=gpu1,,gpu2', "--hosts entry '' is not"),
    ('--gpus_per_host=0', '--gpus_per_host=0 must be >= 1'),
    ('--data_format=lmdb', "--data_format='lmdb'"),
    ('--slurm', '--hosts and --slurm exclude each other'),
])
def test_bad_flags_are_one_line_errors(capsys, flag, fragment):
  line = error_of(capsys, BASE + [flag, '--dry_run'])
  assert fragment in line, line


def test_ssh_launch_runs_every_worker_and_reports_a_failure(capsys,
                                                             tmp_path):
  # A stand-in for ssh runs the remote command here: `ssh -o OPT HOST CMD`.
  fake_ssh = tmp_path / 'ssh'
  fake_ssh.write_text('#!/bin/sh\nshift 3\nexec sh -c "$1"\n')
  fake_ssh.chmod(0o755)
  argv = BASE[:2] + ['--hosts=w0,w1', f'--ssh={fake_ssh}'] + BASE[3:]
  # `echo` for python: each worker prints its training command.
  code = gpu_cluster.main(argv + ['--python=echo'])
  out, err = capsys.readouterr()
  assert code == 0, err
  echoed = [l for l in out.splitlines()
            if l.startswith(('[1] train.py', '[2] train.py'))]
  assert len(echoed) == 2, out
  code = gpu_cluster.main(argv + ['--python=false'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1, err
  assert err[0].startswith(f'error: command exited with status 1: {fake_ssh}')


def test_slurm_launch_writes_the_script_and_submits_it(capsys, tmp_path,
                                                       monkeypatch):
  fake_sbatch = tmp_path / 'bin' / 'sbatch'
  fake_sbatch.parent.mkdir()
  submitted = tmp_path / 'submitted'
  fake_sbatch.write_text(f'#!/bin/sh\necho "$1" > {submitted}\n')
  fake_sbatch.chmod(0o755)
  monkeypatch.setenv('PATH', f'{fake_sbatch.parent}:/usr/bin:/bin')
  script = tmp_path / 'job.sbatch'
  argv = [a for a in BASE if not a.startswith('--hosts')] + [
      '--slurm', '--nodes=2', f'--sbatch_script={script}']
  code = gpu_cluster.main(argv)
  out, err = capsys.readouterr()
  assert code == 0, err
  assert script.read_text().startswith('#!/bin/bash\n#SBATCH')
  assert '#SBATCH --nodes=2' in script.read_text()
  assert submitted.read_text().strip() == str(script)


def test_help_lists_the_flags(capsys):
  assert gpu_cluster.main(['prog', '--help']) == 0
  out = capsys.readouterr().out
  assert '--hosts' in out and '--slurm' in out and '--dry_run' in out
