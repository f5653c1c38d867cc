"""PaperRMSProp against TF1's `tf.compat.v1.train.RMSPropOptimizer`.

The reference code's RMSProp rows use `RMSPropOptimizer(lr, decay=0.9,
momentum=0.9, epsilon=0.001)`. The same small softmax regression is trained
from the same weights in a TF1 graph (tf.Graph + Session, `minimize`) and
eagerly with the Keras optimizer; weights and slots must agree after 1 and 10
steps. Model Garden's `rmsprop` (mean square starting at 0) must not.
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.modeling.optimization import optimizer_factory
from official_ext.modeling.optimization import configs
from official_ext.modeling.optimization import factory
from official_ext.modeling.optimization import rmsprop

LR = 0.05
PAPER = dict(rho=0.9, momentum=0.9, epsilon=0.001)
RTOL, ATOL = 1e-5, 1e-7


def problem(seed=0, n=16, features=5, classes=3):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, features)).astype(np.float32)
  y = rng.integers(0, classes, size=n)
  kernel = (0.3 * rng.standard_normal((features, classes))).astype(np.float32)
  bias = (0.1 * rng.standard_normal(classes)).astype(np.float32)
  return x, np.eye(classes, dtype=np.float32)[y], kernel, bias


def loss(x, labels, kernel, bias):
  return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
      labels=labels, logits=tf.matmul(x, kernel) + bias))


def tf1_trajectory(steps, rho, momentum, epsilon, centered=False):
  """[(kernel, bias)] after each step, and the final 'rms' slots, in TF1."""
  x, labels, kernel0, bias0 = problem()
  graph = tf.Graph()
  with graph.as_default():
    kernel = tf.compat.v1.get_variable('kernel', initializer=kernel0)
    bias = tf.compat.v1.get_variable('bias', initializer=bias0)
    opt = tf.compat.v1.train.RMSPropOptimizer(
        LR, decay=rho, momentum=momentum, epsilon=epsilon, centered=centered)
    train_op = opt.minimize(loss(x, labels, kernel, bias))
    rms = [opt.get_slot(v, 'rms') for v in (kernel, bias)]
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      out = []
      for _ in range(steps):
        sess.run(train_op)
        out.append(sess.run([kernel, bias]))
      return out, sess.run(rms)


def keras_trajectory(opt, steps):
  x, labels, kernel0, bias0 = problem()
  kernel, bias = tf.Variable(kernel0), tf.Variable(bias0)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      value = loss(x, labels, kernel, bias)
    opt.apply_gradients(zip(tape.gradient(value, [kernel, bias]),
                            [kernel, bias]))

  out = []
  for _ in range(steps):
    step()
    out.append([kernel.numpy(), bias.numpy()])
  return out, [opt.get_slot(v, 'rms').numpy() for v in (kernel, bias)]


def max_update_difference(a, b):
  return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


@pytest.mark.parametrize('hp', [
    PAPER,
    dict(PAPER, centered=True),
    # Keras would put epsilon outside the root at momentum 0; TF1 does not.
    dict(PAPER, momentum=0.0),
], ids=['paper', 'centered', 'no_momentum'])
def test_matches_tf1_rmsprop_after_1_and_10_steps(hp):
  want, want_rms = tf1_trajectory(10, **hp)
  got, got_rms = keras_trajectory(rmsprop.PaperRMSProp(LR, **hp), 10)
  for step in (0, 9):
    for g, w, name in zip(got[step], want[step], ('kernel', 'bias')):
      np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL,
                                 err_msg=f'{name} after step {step + 1}')
  for g, w in zip(got_rms, want_rms):
    np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


def test_model_garden_rmsprop_is_not_the_reference():
  """Keras's mean square starts at 0: visibly different first update."""
  want, _ = tf1_trajectory(1, **PAPER)
  keras, _ = keras_trajectory(tf_keras.optimizers.legacy.RMSprop(LR, **PAPER),
                              1)
  x, labels, kernel0, bias0 = problem()
  del x, labels
  tf1_update = max_update_difference(want[0], [kernel0, bias0])
  assert max_update_difference(keras[0], want[0]) > 2 * tf1_update


def test_factory_builds_paper_rmsprop_and_keeps_model_garden_rmsprop():
  assert optimizer_factory.LEGACY_OPTIMIZERS_CLS['paper_rmsprop'] is (
      rmsprop.PaperRMSProp)
  config = configs.OptimizationConfig(
      optimizer=configs.OptimizerConfig(
          type='paper_rmsprop',
          paper_rmsprop=configs.PaperRMSPropConfig(global_clipnorm=2.0)),
      learning_rate={'type': 'constant', 'constant': {'learning_rate': LR}})
  opt = factory.build_optimizer(config)
  assert isinstance(opt, rmsprop.PaperRMSProp)
  assert (opt.epsilon, opt.global_clipnorm) == (0.001, 2.0)
  assert float(opt._get_hyper('rho')) == pytest.approx(0.9)
  assert float(opt._get_hyper('momentum')) == pytest.approx(0.9)
  config.optimizer.type = 'rmsprop'
  plain = factory.build_optimizer(config)
  assert type(plain) is tf_keras.optimizers.legacy.RMSprop  # pylint: disable=unidiomatic-typecheck
