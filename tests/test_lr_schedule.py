"""The scaled schedules against the closed formulas, for every Table 2 row."""
import math

import numpy as np
import pytest
import tensorflow as tf

import experiments
from experiments import paper_table2
from official.core import exp_factory
from official_ext.modeling.optimization import factory
from official_ext.modeling.optimization import lr_schedule

IMAGENET_TRAIN = 1281167


def reference_poly(step, scaled, warmup, total, end=0.1, power=2.0):
  """The reference's `poly` branch (utils.build_learning_rate), in NumPy:
  tf.train.polynomial_decay(scaled, max(1, step - warmup),
  total - warmup + 1, end, power) after warmup."""
  decay_steps = total - warmup + 1
  global_step = np.minimum(np.maximum(1, step - warmup), decay_steps)
  return (scaled - end) * (1.0 - global_step / decay_steps) ** power + end


def reference_lr(row, step):
  """The reference code's schedule, written out independently."""
  scaled = row.lr_per_256 * row.global_batch_size / 256.0
  steps_per_epoch = IMAGENET_TRAIN / row.global_batch_size
  total = int(350 * steps_per_epoch)
  warmup = int(row.warmup_epochs * steps_per_epoch)
  if step < warmup:
    return scaled * step / warmup
  if row.optimizer == 'lars':
    return reference_poly(step, scaled, warmup, total)
  return scaled * 0.97 ** math.floor(step / (2.4 * steps_per_epoch))


@pytest.mark.parametrize('row', paper_table2.TABLE_2, ids=lambda r: r.name)
def test_schedule_matches_closed_formula(row):
  params = exp_factory.get_exp_config(row.name)
  schedule = factory.OptimizerFactory(
      params.trainer.optimizer_config).build_learning_rate()
  steps_per_epoch = IMAGENET_TRAIN / row.global_batch_size
  total = int(350 * steps_per_epoch)
  warmup = int(row.warmup_epochs * steps_per_epoch)
  assert params.trainer.train_steps == total
  checkpoints = {'start': 0, 'mid-warmup': warmup // 2,
                 'last-warmup': warmup - 1, 'end-of-warmup': warmup,
                 'first-decay': warmup + 1, 'mid-decay': (warmup + total) // 2,
                 'second-last': total - 2, 'last': total - 1, 'end': total,
                 'after-end': total + 1}
  for label, step in checkpoints.items():
    got = float(schedule(tf.constant(step, tf.int64)))
    want = reference_lr(row, step)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7), (label, step)


def test_b5_65k_numbers_by_hand():
  params = exp_factory.get_exp_config('effnet_b5_lars_65k')
  schedule = factory.OptimizerFactory(
      params.trainer.optimizer_config).build_learning_rate()
  # 1281167 / 65536 = 19.549 steps per epoch.
  assert schedule.scaled_lr == pytest.approx(20.736)
  assert schedule.warmup_steps == 840          # int(43 * 19.549)
  assert params.trainer.train_steps == 6842    # int(350 * 19.549)
  assert float(schedule(420)) == pytest.approx(10.368, rel=1e-6)
  # The reference's poly counts the first decay step as 1 over 6003 steps:
  # 20.636 * (1 - 1/6003)^2 + 0.1 at steps 840 and 841.
  assert float(schedule(840)) == pytest.approx(20.729124, rel=1e-6)
  assert float(schedule(841)) == pytest.approx(20.729124, rel=1e-6)
  # The last training step (6841) is 2 steps from the end of the decay.
  assert float(schedule(6841)) == pytest.approx(20.636 * (2 / 6003) ** 2 + 0.1,
                                                rel=1e-6)
  assert float(schedule(6842)) == pytest.approx(20.636 / 6003 ** 2 + 0.1,
                                                rel=1e-6)
  assert float(schedule(6843)) == pytest.approx(0.1, rel=1e-6)


def test_exponential_staircase_and_warmup_peak():
  schedule = lr_schedule.ScaledExponentialDecay(
      lr_per_256=0.016, global_batch_size=4096, steps_per_epoch=10.0,
      train_steps=1000, warmup_epochs=5)
  peak = 0.016 * 16
  assert float(schedule(49)) == pytest.approx(peak * 49 / 50)
  # From step 50 the staircase decay counts from step 0: floor(50 / 24) = 2.
  assert float(schedule(50)) == pytest.approx(peak * 0.97 ** 2)
  assert float(schedule(71)) == pytest.approx(peak * 0.97 ** 2)
  assert float(schedule(72)) == pytest.approx(peak * 0.97 ** 3)


def test_polynomial_end_lr_configurable_and_no_warmup():
  schedule = lr_schedule.ScaledPolynomialDecay(
      lr_per_256=1.0, global_batch_size=256, steps_per_epoch=10.0,
      train_steps=100, warmup_epochs=0, power=2.0, end_learning_rate=1e-4)
  for step in (0, 1, 2, 50, 99, 100, 101, 150):
    want = reference_poly(step, 1.0, 0, 100, end=1e-4)
    assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step
  assert float(schedule(101)) == pytest.approx(1e-4)


def test_schedule_rejects_unresolved_config():
  with pytest.raises(ValueError, match='train_steps=0'):
    lr_schedule.ScaledPolynomialDecay(
        lr_per_256=1.0, global_batch_size=256, steps_per_epoch=1.0,
        train_steps=0)
