"""Smoke tests of benchmarks/allreduce_share.py (run as a subprocess).

The script splits the CPU into logical devices before TensorFlow initializes,
which this test session has already done (conftest), hence the subprocess.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join('benchmarks', 'allreduce_share.py')
TINY = ['--replicas', '2', '--image_size', '32', '--per_replica_batch', '2',
        '--steps', '2', '--rounds', '1', '--warmup', '1']


def run(*flags, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, SCRIPT, *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout,
                        check=False)


def shares(stdout):
  return {m.group(1): float(m.group(2)) for m in re.finditer(
      r'all-reduce share of step time \(([a-z ]+)\): (-?[0-9.]+)', stdout)}


@pytest.mark.slow
def test_tiny_run_reports_shares_and_writes_a_profile(tmp_path):
  # ~1.5-2 min on a shared 2-core host: B0's train step is traced twice
  # (with and without the all-reduce), 25-45 s each.
  result = run(*TINY, '--profile_dir', str(tmp_path), '--profile_steps', '1')
  assert result.returncode == 0, result.stderr[-2000:]
  found = shares(result.stdout)
  assert 0.0 < found['isolated'] < 1.0, result.stdout
  assert 'net of floor' in found
  assert -1.0 < found['differential'] < 1.0, result.stdout
  assert 'gradient bytes per replica per step: 16,081,432' in result.stdout
  assert 'GB/s' in result.stdout
  # The no-reduce step really has no gradient reduction: one AddN fewer per
  # trainable variable (213) than the full step.
  counts = dict(re.findall(r'(full|allreduce|no-reduce) (\d+)',
                           result.stdout.split('reduction ops')[1]
                           .splitlines()[0]))
  assert int(counts['allreduce']) == 213
  assert int(counts['full']) - int(counts['no-reduce']) == 213
  traces = [f for _, _, files in os.walk(tmp_path) for f in files
            if f.endswith('.xplane.pb')]
  assert traces, list(os.walk(tmp_path))


def test_unknown_experiment_is_one_error_line():
  result = run('--experiment', 'no_such_experiment', timeout=120)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: unknown experiment'), (
      result.stderr)


def test_bad_replica_count_is_one_error_line():
  result = run('--replicas', '0', timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip() == 'error: --replicas=0 must be >= 1'
