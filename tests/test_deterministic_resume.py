"""runtime.deterministic: a run killed (SIGKILL) and rerun ends as one never
killed; the training stream resumes at the checkpoint's position."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml

from official_ext.core import determinism
from official_ext.dataloaders import classification_input as ci
from official_ext.tools import make_fixture
from official_ext.vision.configs import image_classification as ic
from tests import short_runs

# What a deterministic run cannot reproduce, switched off.
DETERMINISTIC = {
    'runtime': {'deterministic': True, 'seed': 7},
    'task': {'model': {'dropout_rate': 0.0, 'backbone': {
        'paper_efficientnet': {'stochastic_depth_drop_rate': 0.0}}}},
}


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  return make_fixture.make_fixture(
      str(tmp_path_factory.mktemp('det') / 'fixture'),
      num_classes=short_runs.NUM_CLASSES, num_train=short_runs.NUM_TRAIN,
      num_eval=short_runs.NUM_EVAL, image_size=20, num_shards=2)


def test_demo_defaults_are_refused_naming_each_setting(fixture):
  with pytest.raises(ValueError) as error:
    short_runs.resolved_params(fixture, {'runtime': {'deterministic': True}})
  message = str(error.value)
  assert 'task.model.dropout_rate=0.2' in message
  assert ('task.model.backbone.paper_efficientnet.'
          'stochastic_depth_drop_rate=0.2') in message
  params = short_runs.resolved_params(fixture, DETERMINISTIC)
  assert params.task.train_data.seed == 7
  assert params.task.train_data.deterministic


def test_randaugment_is_refused(fixture):
  extra = yaml.safe_load(yaml.safe_dump(DETERMINISTIC))
  extra['task']['train_data'] = {'aug_type': {'type': 'randaug'}}
  with pytest.raises(ValueError, match=r"aug_type.type='randaug'"):
    short_runs.resolved_params(fixture, extra)


def _train_batches(fixture, start_step, count, seed=7):
  params = ic.DataConfig(
      input_path=fixture.train_pattern, is_training=True, global_batch_size=4,
      shuffle_buffer_size=8, deterministic=True, seed=seed,
      crop_area_range=(0.1, 1.0))
  dataset = ci.build_dataset(params, image_size=12, start_step=start_step)
  return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def test_stream_resumed_at_a_step_continues_the_uninterrupted_stream(fixture):
  # 32 examples in batches of 4: steps 5..14 cross an epoch boundary.
  whole = _train_batches(fixture, 0, 15)
  resumed = _train_batches(fixture, 5, 10)
  for (x, y), (rx, ry) in zip(whole[5:], resumed):
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(x, rx)
  # The crops are random: another seed gives other images.
  other = _train_batches(fixture, 0, 2, seed=8)
  assert not np.array_equal(other[0][0], whole[0][0])


def _final_eval(model_dir):
  with open(os.path.join(model_dir, 'summary.json')) as f:
    return json.load(f)['evals']


def _launch_and_kill_after(model_dir, fixture, checkpoint):
  """Starts train.py; SIGKILLs it as soon as `checkpoint` is the latest (its
  files are written, then the state file names it)."""
  override_file = str(model_dir) + '.override.yaml'
  with open(override_file, 'w') as f:
    yaml.safe_dump(short_runs.override(fixture, DETERMINISTIC), f)
  process = subprocess.Popen(
      [sys.executable, os.path.join(short_runs.ROOT, 'train.py'),
       f'--experiment={short_runs.EXPERIMENT}', '--mode=train_and_eval',
       f'--model_dir={model_dir}', f'--params_override={override_file}'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      cwd=short_runs.ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  wanted = os.path.join(model_dir, checkpoint)
  deadline = time.time() + 600
  while (tf.train.latest_checkpoint(str(model_dir)) != wanted and
         process.poll() is None):
    assert time.time() < deadline, 'no checkpoint within 10 minutes'
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  return process.returncode


@pytest.mark.slow  # ~2 minutes: three short runs, the first two at once.
def test_killed_and_rerun_ends_as_the_uninterrupted_run(fixture, tmp_path):
  whole = tmp_path / 'whole'
  # The uninterrupted run overlaps the one that is killed (two cores).
  uninterrupted = short_runs.start(whole, fixture, DETERMINISTIC)
  killed = tmp_path / 'killed'
  first = f'ckpt-{short_runs.EVAL_STEPS[0]}'
  assert _launch_and_kill_after(killed, fixture, first) == -signal.SIGKILL
  result = uninterrupted.result()
  assert result.returncode == 0, result.stderr[-3000:]
  assert tf.train.latest_checkpoint(str(killed)) == str(killed / first)
  result = short_runs.launch(killed, fixture, DETERMINISTIC)
  assert result.returncode == 0, result.stderr[-3000:]
  restores = [line for line in result.stdout.splitlines()
              if line.startswith('restored')]
  assert any(line.startswith(f'restored model from {killed / first}')
             for line in restores), restores

  expected = {e['step']: e for e in _final_eval(whole)}
  resumed = _final_eval(killed)
  # The step-2 eval is kept if it finished before the kill (it runs after
  # the checkpoint); the final eval is always there. Every eval agrees.
  assert resumed[-1]['step'] == short_runs.TRAIN_STEPS
  for b in resumed:
    a = expected[b['step']]
    for key in ('top1', 'top5', 'loss'):
      assert b[key] == pytest.approx(a[key], abs=1e-5), (key, a, b)
