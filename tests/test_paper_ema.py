"""PaperExponentialMovingAverage against TF1's `tf.train.ExponentialMovingAverage`.

The reference code keeps `ExponentialMovingAverage(0.9999,
num_updates=global_step)` of the trainable variables and the BN moving
statistics and applies it under a control dependency on
`optimizer.minimize(loss, global_step)`. An EMA is a function of the
variables' trajectory, so a small Keras model (conv, batch norm, dense) is
trained for 10 steps with the project's EMA wrapper, and a TF1 graph replays
the same trajectory: a TF1 optimizer step moves each variable to its recorded
value and increments global_step, then the TF1 EMA is applied exactly as in
the reference's main.py. Shadows must agree after every step; Model Garden's
zero-initialised wrapper must not. Also: under a 2-replica MirroredStrategy,
and checkpointing (restore, Model Garden's EMACheckpointing, swap_weights).
"""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.core import actions
from official.modeling import optimization
from official.modeling.optimization import ema_optimizer
from official.modeling.optimization.configs import optimizer_config
from official_ext.modeling.optimization import configs
from official_ext.modeling.optimization import ema
from official_ext.modeling.optimization import factory
from tests import conftest

STEPS = 10
RTOL, ATOL = 1e-6, 1e-7


def make_model(seed=0):
  tf_keras.utils.set_random_seed(seed)
  inputs = tf_keras.Input((6, 6, 3))
  x = tf_keras.layers.Conv2D(4, 3, activation='relu')(inputs)
  x = tf_keras.layers.BatchNormalization(momentum=0.5)(x)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  outputs = tf_keras.layers.Dense(3, bias_initializer='random_normal')(x)
  return tf_keras.Model(inputs, outputs)


def make_data(step, n=4):
  rng = np.random.default_rng(step)
  return (rng.standard_normal((n, 6, 6, 3)).astype(np.float32),
          rng.integers(0, 3, size=n))


def values(variables, strategy=None):
  """Each variable's value, or (with a strategy) its per-replica values."""
  if strategy is None:
    return [v.numpy() for v in variables]
  return [[c.numpy() for c in strategy.experimental_local_results(v)]
          for v in variables]


def train(model, opt, steps, strategy=None):
  """Trains `steps` steps; returns the variables' and the shadows' values
  (the first replica's) after each step."""
  strategy = strategy or tf.distribute.get_strategy()
  scale = strategy.num_replicas_in_sync

  @tf.function
  def train_step(x, y):
    def step_fn(x, y):
      with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(
            tf_keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True)) / scale
      grads = tape.gradient(loss, model.trainable_variables)
      opt.apply_gradients(zip(grads, model.trainable_variables))
    strategy.run(step_fn, args=(x, y))

  first = lambda v: strategy.experimental_local_results(v)[0].numpy()
  trajectory, shadows = [], []
  for step in range(steps):
    train_step(*make_data(step))
    trajectory.append([first(v) for v in model.variables])
    shadows.append([first(opt.get_slot(v, 'average'))
                    for v in model.variables])
  return trajectory, shadows


def tf1_shadows(initial, trajectory, decay):
  """The reference EMA's shadows after each step, replayed in a TF1 graph."""
  graph = tf.Graph()
  with graph.as_default():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    variables = [tf.compat.v1.get_variable(f'v{i}', initializer=value)
                 for i, value in enumerate(initial)]
    targets = [tf.compat.v1.placeholder(tf.float32, v.shape)
               for v in variables]
    # One TF1 optimizer step (lr 1) to the recorded values: it increments
    # global_step after the variable updates, as the reference's minimize.
    train_op = tf.compat.v1.train.GradientDescentOptimizer(1.0).apply_gradients(
        [(v - t, v) for v, t in zip(variables, targets)],
        global_step=global_step)
    reference = tf.compat.v1.train.ExponentialMovingAverage(
        decay=decay, num_updates=global_step)
    with tf.control_dependencies([train_op]):
      ema_op = reference.apply(variables)
    averages = [reference.average(v) for v in variables]
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      out = []
      for values_after_step in trajectory:
        sess.run(ema_op, dict(zip(targets, values_after_step)))
        out.append(sess.run(averages))
      return out


def project_ema(average_decay):
  """The EMA-wrapped SGD the project's optimizer factory builds."""
  config = configs.OptimizationConfig(
      optimizer={'type': 'sgd', 'sgd': {'momentum': 0.9}},
      learning_rate={'type': 'constant', 'constant': {'learning_rate': 0.5}},
      ema=optimizer_config.EMAConfig(average_decay=average_decay,
                                     trainable_weights_only=False,
                                     dynamic_decay=True))
  return factory.build_optimizer(config)


def relative_error(got, want):
  return max(float(np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-12))
             for g, w in zip(got, want))


@pytest.mark.parametrize('average_decay', [0.9999, 0.5])
def test_matches_tf1_exponential_moving_average(average_decay):
  """0.9999 is the paper's; at 0.5 the cap takes over from step 8 on."""
  model = make_model()
  opt = project_ema(average_decay)
  assert isinstance(opt, ema.PaperExponentialMovingAverage)
  assert isinstance(opt, optimization.ExponentialMovingAverage)
  opt.shadow_copy(model)
  initial = values(model.variables)
  assert any('moving_mean' in v.name for v in model.variables)
  trajectory, got = train(model, opt, STEPS)
  want = tf1_shadows(initial, trajectory, average_decay)
  for step in range(STEPS):
    for g, w, v in zip(got[step], want[step], model.variables):
      np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL,
                                 err_msg=f'{v.name} after step {step + 1}')


def test_model_garden_zero_start_is_not_the_reference():
  model = make_model()
  opt = ema_optimizer.ExponentialMovingAverage(
      tf_keras.optimizers.legacy.SGD(0.5, momentum=0.9),
      average_decay=0.9999, trainable_weights_only=False)
  opt.shadow_copy(model)
  initial = values(model.variables)
  trajectory, got = train(model, opt, 1)
  want = tf1_shadows(initial, trajectory, 0.9999)
  assert relative_error(got[0], want[0]) > 0.1


def test_two_replicas_start_at_the_weights_and_follow_the_rule():
  """Shadows start at every replica's values (BN statistics included)."""
  strategy = conftest.cpu_strategy(2)
  decay = 0.9999
  with strategy.scope():
    model = make_model()
    bn = [l for l in model.layers
          if isinstance(l, tf_keras.layers.BatchNormalization)][0]
    bn.moving_mean.assign(tf.fill(bn.moving_mean.shape, 0.25))
    bn.moving_variance.assign(tf.fill(bn.moving_variance.shape, 3.0))
    opt = project_ema(decay)
    opt.shadow_copy(model)
  slots = [opt.get_slot(v, 'average') for v in model.variables]
  for var, slot in zip(model.variables, slots):
    want = values([var], strategy)[0]
    for replica, got in enumerate(values([slot], strategy)[0]):
      np.testing.assert_array_equal(got, want[replica], err_msg=var.name)
  shadow = [v.numpy().astype(np.float64) for v in model.variables]
  trajectory, _ = train(model, opt, STEPS, strategy)
  for step, after in enumerate(trajectory, start=1):
    d = min(decay, (1.0 + step) / (10.0 + step))
    shadow = [s - (1 - d) * (s - a) for s, a in zip(shadow, after)]
  assert int(opt.iterations.numpy()) == STEPS
  for var, slot, want in zip(model.variables, slots, shadow):
    for got in values([slot], strategy)[0]:
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                                 err_msg=var.name)


def test_checkpoint_restore_ema_checkpointing_and_swap(tmp_path):
  strategy = conftest.cpu_strategy(2)
  with strategy.scope():
    model, opt = make_model(seed=1), project_ema(0.9999)
    opt.shadow_copy(model)
  train(model, opt, 3, strategy)
  trained = values(model.variables)
  averages = values([opt.get_slot(v, 'average') for v in model.variables])
  assert relative_error(averages, trained) > 1e-3  # shadows lag the weights
  checkpoint = tf.train.Checkpoint(model=model, optimizer=opt)
  path = checkpoint.save(str(tmp_path / 'ckpt'))

  # Restore after shadow_copy (as Orbit does): the saved shadows win.
  with strategy.scope():
    fresh, fresh_opt = make_model(seed=2), project_ema(0.9999)
    fresh_opt.shadow_copy(fresh)
  tf.train.Checkpoint(model=fresh, optimizer=fresh_opt).restore(
      path).assert_existing_objects_matched().expect_partial()
  for var, want in zip(fresh.variables, averages):
    for got in values([fresh_opt.get_slot(var, 'average')], strategy)[0]:
      np.testing.assert_array_equal(got, want, err_msg=var.name)

  # Model Garden's EMA action saves the averages as the model's weights.
  with strategy.scope():  # as Model Garden's trainer runs its actions
    actions.EMACheckpointing(str(tmp_path), opt, checkpoint)({})
  for got, want in zip(values(model.variables), trained):
    # Swapped back (Model Garden swaps by sums and differences: rounding).
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with strategy.scope():
    exported = make_model(seed=3)
  tf.train.Checkpoint(model=exported).read(tf.train.latest_checkpoint(
      os.path.join(str(tmp_path), 'ema_checkpoints'))).expect_partial()
  for got, want in zip(values(exported.variables), averages):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

  # The eval path: swap to the averages and back.
  with strategy.scope():
    opt.swap_weights()
  for got, want in zip(values(model.variables), averages):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  with strategy.scope():
    opt.swap_weights()
  for got, want in zip(values(model.variables), trained):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
