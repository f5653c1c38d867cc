"""The divergence guard: a clean stop, and the last good checkpoint kept."""
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from official_ext.core import divergence
from tests import short_runs
from tests.conftest import cpu_strategy


def test_guard_reports_the_first_bad_step_of_any_replica():
  strategy = cpu_strategy(2)
  with strategy.scope():
    guard = divergence.DivergenceGuard(loss_upper_bound=100.0)

  @tf.function
  def step(step_number, bad_replica, bad_value):
    def fn():
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      loss = tf.where(replica == bad_replica, bad_value, 1.0)
      guard.update(loss, tf.constant(2.0), step_number)
    strategy.run(fn)

  for number in (1, 2, 3):
    step(tf.constant(number), tf.constant(-1), tf.constant(0.0))
  guard.check()  # Nothing bad yet.
  step(tf.constant(4), tf.constant(1), tf.constant(math.nan))
  step(tf.constant(5), tf.constant(0), tf.constant(math.inf))
  with pytest.raises(divergence.TrainingDiverged) as e:
    guard.check(lambda s: 0.5 * s)
  assert e.value.step == 4 and e.value.learning_rate == 2.0
  assert str(e.value) == ('training diverged at step 4 (learning rate 2): '
                          'loss nan, gradient norm 2 (non-finite)')

  with strategy.scope():
    bounded = divergence.DivergenceGuard(loss_upper_bound=100.0)
  strategy.run(tf.function(
      lambda: bounded.update(tf.constant(500.0), tf.constant(1.0), 7)))
  with pytest.raises(divergence.TrainingDiverged,
                     match='step 7 .*loss 500 above trainer.loss_upper_bound'):
    bounded.check()


@pytest.mark.slow  # ~1 min: one short run on top of the shared finished one.
def test_absurd_learning_rate_stops_with_the_last_good_checkpoint_latest(
    short_run, tmp_path):
  # A copy of a good finished run (4 steps, checkpoints at 2 and 4)...
  model_dir = str(tmp_path / 'run')
  shutil.copytree(short_run.model_dir, model_dir)
  good = tf.train.latest_checkpoint(model_dir)
  assert good.endswith(f'ckpt-{short_runs.TRAIN_STEPS}')

  # ...then the same run carried on at an absurd learning rate.
  absurd = {'trainer': {'train_epochs': 4.0, 'optimizer_config': {
      'learning_rate': {'scaled_polynomial': {'lr_per_256': 1e9,
                                              'warmup_epochs': 0.0}}}}}
  result = short_runs.launch(model_dir, short_run.fixture, absurd,
                             mode='train', flags=['--force_params'])
  code, err = result.returncode, result.stderr
  assert code == 3, err[-3000:]
  assert 'Traceback' not in err
  errors = [l for l in err.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, err[-3000:]
  # LARS bounds each update, so the loss blows up one or two steps in.
  assert re.match(r'error: training diverged at step [56] \(learning rate '
                  r'[\d.e+]+\): loss ', errors[0]), errors[0]
  assert f'the last good checkpoint {good} is kept' in errors[0]

  assert tf.train.latest_checkpoint(model_dir) == good
  reader = tf.train.load_checkpoint(good)
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
      assert np.isfinite(value).all(), name
  with open(os.path.join(model_dir, 'summary.json')) as f:
    assert json.load(f)['status'] == 'diverged'
