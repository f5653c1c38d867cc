"""LAMB and SM3 are selectable in an experiment by params or gin; SM3 trains
one step of the digits demo under a 2-replica MirroredStrategy (LAMB's
training step is Model Garden's, checked in test_lamb.py)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import experiments  # pylint: disable=unused-import
from official.core import task_factory
from official.modeling.optimization import lamb
from official_ext.core import config_overrides
from official_ext.modeling.optimization import sm3
from tests.conftest import cpu_strategy

# No warmup: the demo's schedule starts at LR 0, so step 1 would not move.
NO_WARMUP = ('trainer.optimizer_config.learning_rate.scaled_polynomial.'
             'warmup_epochs=0')
SELECT = {
    'sm3': dict(params_override=(
        'trainer.optimizer_config.optimizer.type=sm3,' + NO_WARMUP)),
    'lamb': dict(gin_params=[
        "trainer.optimizer_config.optimizer.type = 'lamb'"],
                 params_override=NO_WARMUP),
}
CLASSES = {'sm3': sm3.SM3, 'lamb': lamb.LAMB}


def test_lamb_selected_by_gin_builds_with_the_skip_list():
  params = config_overrides.parse_configuration(
      'effnet_b0_digits', lock=False, **SELECT['lamb'])
  optimizer = task_factory.get_task(params.task).create_optimizer(
      params.trainer.optimizer_config, params.runtime)
  inner = getattr(optimizer, '_optimizer', optimizer)  # EMA wrapper
  assert isinstance(inner, lamb.LAMB)
  assert inner.exclude_from_weight_decay


@pytest.mark.slow  # ~40 s: builds and traces B0 on two replicas.
@pytest.mark.parametrize('name', ['sm3'])
def test_digits_demo_trains_one_step_on_two_replicas(name):
  params = config_overrides.parse_configuration(
      'effnet_b0_digits', lock=False, **SELECT[name])
  assert params.trainer.optimizer_config.optimizer.type == name
  strategy = cpu_strategy(2)
  task = task_factory.get_task(params.task)
  with strategy.scope():
    model = task.build_model()
    optimizer = task.create_optimizer(params.trainer.optimizer_config,
                                      params.runtime)
    if hasattr(optimizer, 'shadow_copy'):  # the demo averages weights (EMA)
      optimizer.shadow_copy(model)
  inner = getattr(optimizer, '_optimizer', optimizer)  # EMA wrapper
  assert isinstance(inner, CLASSES[name])

  size = params.task.model.input_size
  rng = np.random.default_rng(0)
  images = rng.standard_normal([4] + list(size)).astype(np.float32)
  labels = rng.integers(0, params.task.model.num_classes, size=4)
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
  inputs = next(iter(strategy.experimental_distribute_dataset(dataset)))
  before = [v.numpy() for v in model.trainable_variables]

  @tf.function
  def step(batch):
    return strategy.run(task.train_step, args=(batch, model, optimizer))

  logs = step(inputs)
  loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, logs[task.loss], None)
  assert np.isfinite(float(loss))
  after = [v.numpy() for v in model.trainable_variables]
  assert all(np.all(np.isfinite(a)) for a in after)
  assert any(not np.array_equal(b, a) for b, a in zip(before, after))
  tf_keras.backend.clear_session()
