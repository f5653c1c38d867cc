"""The classifier's dense kernel starts as the reference's U(+-1/sqrt(classes)).

Reference (`efficientnet_model.dense_kernel_initializer`): kernel [features,
num_classes] ~ U(-1/sqrt(num_classes), 1/sqrt(num_classes)); bias 0.
"""
import numpy as np
import pytest
import tf_keras

import experiments  # pylint: disable=unused-import
from official.core import exp_factory
from official.core import task_factory
from official_ext.modeling import initializers


@pytest.mark.parametrize('shape', [(1280, 1000), (64, 10)])
def test_initializer_draws_uniform_in_the_reference_range(shape):
  kernel = initializers.EfficientNetDenseHead(seed=3)(shape).numpy()
  bound = 1.0 / np.sqrt(shape[1])
  assert np.max(np.abs(kernel)) <= bound
  assert np.max(np.abs(kernel)) > 0.99 * bound
  # U(-b, b): mean 0, standard deviation b / sqrt(3).
  assert abs(kernel.mean()) < 0.05 * bound
  assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.03)


def test_registered_name_round_trips():
  init = tf_keras.initializers.get(initializers.DENSE_HEAD_INITIALIZER)
  assert isinstance(init, initializers.EfficientNetDenseHead)
  again = tf_keras.initializers.deserialize(
      tf_keras.initializers.serialize(initializers.EfficientNetDenseHead(7)))
  assert isinstance(again, initializers.EfficientNetDenseHead)
  assert again.seed == 7


def test_built_model_head_uses_it():
  """The task's model (Model Garden's head) for 1000 classes: +-0.0316."""
  params = exp_factory.get_exp_config('effnet_b0_digits')
  params.override({'task': {'model': {'num_classes': 1000}}})
  assert params.task.model.kernel_initializer == (
      initializers.DENSE_HEAD_INITIALIZER)
  model = task_factory.get_task(params.task).build_model()
  head = model.layers[-1]
  assert isinstance(head, tf_keras.layers.Dense)
  assert isinstance(head.kernel_initializer,
                    initializers.EfficientNetDenseHead)
  kernel, bias = head.kernel.numpy(), head.bias.numpy()
  assert kernel.shape[1] == 1000
  bound = 1.0 / np.sqrt(1000)
  # Model Garden's 'random_uniform' would reach 0.05.
  assert bound * 0.99 < np.max(np.abs(kernel)) <= bound
  np.testing.assert_array_equal(bias, np.zeros(1000))
  del model
  tf_keras.backend.clear_session()
