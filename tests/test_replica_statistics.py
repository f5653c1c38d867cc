"""One set of BN moving statistics and EMA shadows on every replica.

On 4 logical CPU replicas (MirroredStrategy) with grouped BN (2 groups of 2)
each replica's moving statistics and EMA shadows drift apart; the sync must
give every replica their mean (a NumPy reference), leave training state
alone, and make the last evaluation of a run equal `--mode=eval` of its
final checkpoint.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.modeling.optimization import ema_optimizer

from official_ext.core import replica_statistics
from official_ext.core import run_driver
from official_ext.modeling.layers import grouped_batch_norm
from official_ext.tools import make_fixture
from tests import short_runs
from tests.conftest import cpu_strategy

NUM_REPLICAS = 4


def components(variable):
  return np.stack([v.numpy() for v in variable.values])


def test_sync_sets_every_replica_to_the_mean():
  strategy = cpu_strategy(NUM_REPLICAS)
  with strategy.scope():
    model = tf_keras.Sequential([
        tf_keras.layers.Conv2D(3, 3, input_shape=(6, 6, 2)),
        grouped_batch_norm.GroupedBatchNormalization(group_size=2,
                                                     momentum=0.5),
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(2)])
    optimizer = ema_optimizer.ExponentialMovingAverage(
        tf_keras.optimizers.legacy.SGD(0.1), trainable_weights_only=False,
        average_decay=0.5)
    optimizer.shadow_copy(model)
  sync = replica_statistics.ReplicaStatisticsSync(strategy, model, optimizer)
  stats = [v for v in model.variables if 'moving' in v.name]
  shadows = [optimizer.get_slot(v, 'average') for v in stats]
  assert len(stats) == 2 and sync.variables == stats + shadows

  images = tf.random.stateless_normal([3, NUM_REPLICAS * 4, 6, 6, 2], [1, 2])
  # Each replica (and group) sees data of its own scale.
  images *= tf.reshape(tf.repeat(tf.range(1.0, NUM_REPLICAS + 1), 4),
                       [1, -1, 1, 1, 1])

  @tf.function
  def train_step(batch):
    def step(x):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True)))
      grads = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))
    strategy.run(step, args=(batch,))

  for batch in images:
    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx, b=batch: b[ctx.replica_id_in_sync_group * 4:
                               (ctx.replica_id_in_sync_group + 1) * 4])
    train_step(dist)
  before = {v.name: components(v) for v in sync.variables}
  trainable = [v.numpy() for v in model.trainable_variables]
  for value in before.values():  # The groups really did drift apart.
    assert np.abs(value[0] - value[2]).max() > 1e-3
  sync()
  for variable in sync.variables:
    expected = before[variable.name].astype(np.float64).mean(axis=0)
    for value in components(variable):
      np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7)
  for variable, value in zip(model.trainable_variables, trainable):
    np.testing.assert_array_equal(components(variable)[1], value)


def test_sync_is_a_no_op_on_one_replica():
  with cpu_strategy(1).scope():
    model = tf_keras.Sequential([tf_keras.layers.BatchNormalization(
        input_shape=(3,))])
  sync = replica_statistics.ReplicaStatisticsSync(cpu_strategy(1), model,
                                                  None)
  assert sync.variables == []
  sync()


@pytest.mark.slow  # ~1.5 min: a 4-replica grouped-BN run, then its eval.
def test_last_interleaved_eval_equals_eval_of_the_final_checkpoint(tmp_path):
  fixture = make_fixture.make_fixture(
      str(tmp_path / 'fixture'), num_classes=short_runs.NUM_CLASSES,
      num_train=short_runs.NUM_TRAIN, num_eval=short_runs.NUM_EVAL,
      image_size=20)
  params = short_runs.resolved_params(fixture, {
      'runtime': {'num_cpu_replicas': NUM_REPLICAS},
      'task': {'model': {'norm_activation': {
          'bn_group_rule': 'fixed', 'bn_group_size': 2}}}})
  assert params.trainer.optimizer_config.ema.average_decay > 0
  model_dir = str(tmp_path / 'run')
  run_driver.run(params, 'train_and_eval', model_dir,
                 experiment=short_runs.EXPERIMENT)
  assert tf.train.latest_checkpoint(model_dir).endswith(
      f'ckpt-{short_runs.TRAIN_STEPS}')
  with open(os.path.join(model_dir, 'summary.json')) as f:
    last = json.load(f)['evals'][-1]
  assert last['step'] == short_runs.TRAIN_STEPS
  from_checkpoint = run_driver.run(params, 'eval', model_dir,
                                   experiment=short_runs.EXPERIMENT)
  assert float(from_checkpoint['top_1_accuracy']) == last['top1']
  assert float(from_checkpoint['validation_loss']) == pytest.approx(
      last['loss'], abs=1e-5)
