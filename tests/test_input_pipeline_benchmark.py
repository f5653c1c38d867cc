"""Smoke test of benchmarks/input_pipeline.py and its ratio statistics."""
import os
import re
import subprocess
import sys

import pytest

from benchmarks import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paired_ratio_quartiles_pairs_runs_of_the_same_round():
  # (images/s, images per CPU-second) per round; ours is 2x mg in every round
  # even though both drift 4x across rounds.
  ours = [(200.0, 20.0), (400.0, 40.0), (800.0, 80.0), (100.0, 10.0)]
  mg = [(100.0, 20.0), (200.0, 40.0), (400.0, 40.0), (50.0, 10.0)]
  assert input_pipeline.paired_ratio_quartiles(ours, mg, 0) == (2.0, 2.0, 2.0)
  low, mid, high = input_pipeline.paired_ratio_quartiles(ours, mg, 1)
  assert low == 1.0 and mid == 1.0 and 1.0 < high <= 2.0
  assert input_pipeline.paired_ratio_quartiles([(3.0, 1.0)], [(2.0, 1.0)],
                                               0) == (1.5, 1.5, 1.5)


def test_tiny_run_prints_both_pipelines_and_the_ratios():
  # ~15 s: a subprocess, as the benchmark builds its own fixture.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run(
      [sys.executable, os.path.join('benchmarks', 'input_pipeline.py'),
       '--rounds', '2', '--batches', '2', '--warmup', '1', '--records', '32',
       '--shards', '2', '--batch_size', '8', '--image_size', '32',
       '--source_height', '40', '--source_width', '48'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout
  for label in ('official_ext', 'Model Garden'):
    match = re.search(label + r'\s+([0-9.]+) images/s\s+([0-9.]+) images/s '
                      r'per core\s+([0-9.]+) images per CPU-second', out)
    assert match, out
    wall, per_core, _ = map(float, match.groups())
    assert wall > 0 and per_core == pytest.approx(
        wall / os.cpu_count(), abs=0.1)
  assert re.search(r'ratio ours/mg of the medians: [0-9.]+x wall', out), out
  assert re.search(r'within rounds, wall: median [0-9.]+x, quartiles', out), (
      out)
