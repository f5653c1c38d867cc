"""PaperLARS against an independent NumPy implementation of the reference LARS.

Reference (the paper's code): for a variable w not matching the skip list,
trust = eeta*||w|| / (||g|| + wd*||w|| + eps), 1 where ||w|| or ||g|| is 0;
accum = m*accum + lr*trust*(g + wd*w); w -= accum. Skipped variables:
accum = m*accum + lr*g; w -= accum.
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.modeling.optimization import ema_optimizer
from official_ext.modeling.optimization import configs
from official_ext.modeling.optimization import lars
from tests import conftest

SKIP = ('batch_normalization', 'bias', 'beta', 'gamma')
# Non-default hyperparameters large enough that every term is visible at the
# test tolerance.
HP = dict(momentum=0.9, eeta=0.05, weight_decay=0.01, epsilon=1e-3)
RTOL, ATOL = 1e-5, 1e-7


# ----------------------------------------------------------------- reference
def _skipped(name, skip_list=SKIP):
  return any(s in name for s in skip_list)


def ref_update(w, g, accum, *, lr, skipped, momentum, eeta, weight_decay,
               epsilon):
  """One reference LARS step for one variable, in float64. Returns (w, acc)."""
  w, g, accum = (np.asarray(x, np.float64) for x in (w, g, accum))
  if skipped:
    scaled = lr * g
  else:
    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
    if w_norm > 0 and g_norm > 0:
      trust = eeta * w_norm / (g_norm + weight_decay * w_norm + epsilon)
    else:
      trust = 1.0
    scaled = lr * trust * (g + weight_decay * w)
  accum = momentum * accum + scaled
  return w - accum, accum


def ref_step(state, grads, names, lr, hp=HP):
  """Applies ref_update to a dict name -> (w, accum)."""
  for name, g in zip(names, grads):
    w, acc = state[name]
    state[name] = ref_update(w, g, acc, lr=lr, skipped=_skipped(name), **hp)


def assert_close(actual, expected, what=''):
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL,
                             err_msg=what)


# --------------------------------------------------------------------- model
def make_model(seed=0):
  tf_keras.utils.set_random_seed(seed)
  inputs = tf_keras.Input((6, 6, 3))
  # ReLU before BN so that the conv bias gets a non-zero gradient.
  x = tf_keras.layers.Conv2D(4, 3, activation='relu',
                             bias_initializer='random_normal')(inputs)
  x = tf_keras.layers.BatchNormalization(
      gamma_initializer='random_uniform', beta_initializer='random_normal')(x)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  outputs = tf_keras.layers.Dense(
      5, bias_initializer='random_normal')(x)
  return tf_keras.Model(inputs, outputs)


def make_data(rng, n=4):
  x = rng.standard_normal((n, 6, 6, 3)).astype(np.float32)
  y = rng.integers(0, 5, size=n)
  return x, y


def loss_fn(model, x, y):
  logits = model(x, training=True)
  return tf.reduce_mean(
      tf_keras.losses.sparse_categorical_crossentropy(
          y, logits, from_logits=True))


def check_names(variables):
  """The model exercises both branches: Keras names as the recipe expects."""
  names = [v.name for v in variables]
  assert sum(_skipped(n) for n in names) == 4, names  # 2 biases, gamma, beta
  assert sum('kernel' in n and not _skipped(n) for n in names) == 2, names
  assert any('batch_normalization' in n and 'gamma' in n for n in names)
  assert any('batch_normalization' in n and 'beta' in n for n in names)


def lr_at(step):
  """Independent copy of the PolynomialDecay used below (power 1)."""
  return 0.05 + (0.5 - 0.05) * (1.0 - min(step, 10) / 10.0)


def run_steps(num_steps):
  model = make_model()
  variables = model.trainable_variables
  check_names(variables)
  names = [v.name for v in variables]
  schedule = tf_keras.optimizers.schedules.PolynomialDecay(
      0.5, 10, end_learning_rate=0.05)
  opt = lars.PaperLARS(learning_rate=schedule, **HP)

  @tf.function
  def train_step(x, y):
    with tf.GradientTape() as tape:
      loss = loss_fn(model, x, y)
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))
    return grads

  state = {v.name: (v.numpy(), np.zeros(v.shape)) for v in variables}
  rng = np.random.default_rng(1)
  for step in range(num_steps):
    grads = [g.numpy() for g in train_step(*make_data(rng))]
    assert all(np.linalg.norm(g) > 1e-4 for g in grads)
    ref_step(state, grads, names, lr_at(step))
  assert int(opt.iterations) == num_steps
  for v in variables:
    assert_close(v.numpy(), state[v.name][0], v.name)
    assert_close(-opt.get_slot(v, 'momentum').numpy(), state[v.name][1],
                 v.name + ' accumulator')
  return model


# --------------------------------------------------------------------- tests
def test_one_step_matches_reference():
  run_steps(1)


def test_ten_steps_with_schedule_match_reference():
  run_steps(10)


def test_zero_norms_give_trust_one():
  lr, wd = 0.1, 0.01
  hp = dict(momentum=0.9, eeta=0.001, weight_decay=wd, epsilon=0.0)
  zero_w = tf.Variable(tf.zeros([3]), name='zero_kernel')
  zero_g = tf.Variable([1.0, -2.0, 2.0], name='still_kernel')
  both = tf.Variable(tf.zeros([2]), name='both_kernel')
  g1 = tf.constant([0.5, 1.0, -1.0])
  opt = lars.PaperLARS(learning_rate=lr, **hp)
  opt.apply_gradients([(g1, zero_w), (tf.zeros([3]), zero_g),
                       (tf.zeros([2]), both)])
  # trust 1: update = lr * (g + wd * w).
  np.testing.assert_allclose(zero_w.numpy(), -lr * g1.numpy(), rtol=1e-6)
  np.testing.assert_allclose(
      zero_g.numpy(), np.array([1.0, -2.0, 2.0]) * (1 - lr * wd), rtol=1e-6)
  np.testing.assert_array_equal(both.numpy(), [0.0, 0.0])
  assert np.all(np.isfinite(opt.get_slot(both, 'momentum').numpy()))


@pytest.mark.parametrize('weight_decay,epsilon,trust', [
    (0.0, 0.0, 0.1 * 5 / 1.0),           # plain eeta*||w||/||g||
    (0.1, 0.0, 0.1 * 5 / (1.0 + 0.5)),   # wd*||w|| in the denominator
    (0.0, 0.5, 0.1 * 5 / (1.0 + 0.5)),   # epsilon in the denominator
    (0.1, 0.5, 0.1 * 5 / (1.0 + 0.5 + 0.5)),
])
def test_epsilon_and_weight_decay_enter_the_update(weight_decay, epsilon,
                                                   trust):
  """Hand-computed: ||w|| = 5, ||g|| = 1; each setting gives another update."""
  lr = 0.2
  w0, g = np.array([3.0, 4.0]), np.array([0.8, -0.6])  # g not parallel to w
  var = tf.Variable(w0, dtype=tf.float32, name='w_kernel')
  opt = lars.PaperLARS(learning_rate=lr, momentum=0.9, eeta=0.1,
                       weight_decay=weight_decay, epsilon=epsilon)
  opt.apply_gradients([(tf.constant(g, tf.float32), var)])
  expected_step = lr * trust * (g + weight_decay * w0)
  # float32 weights: absolute tolerance of a few ulps of |w| = 4.
  np.testing.assert_allclose(w0 - var.numpy(), expected_step, rtol=1e-5,
                             atol=2e-6)
  # The NumPy reference agrees with the hand computation.
  np.testing.assert_allclose(
      ref_update(w0, g, 0 * w0, lr=lr, skipped=False, momentum=0.9, eeta=0.1,
                 weight_decay=weight_decay, epsilon=epsilon)[0],
      w0 - expected_step, rtol=1e-12)
  # ...and differs, far beyond the tolerance, from the step without them.
  plain_step = lr * 0.5 * g
  if weight_decay or epsilon:
    assert np.max(np.abs(expected_step - plain_step)) > 1e3 * 2e-6


def test_skipped_variables_get_plain_momentum_sgd():
  lr, m = 0.3, 0.9
  opt = lars.PaperLARS(learning_rate=lr, momentum=m, eeta=0.1,
                       weight_decay=0.5, epsilon=0.1)
  bias = tf.Variable([1.0, 2.0], name='dense/bias')
  gamma = tf.Variable([1.0, 2.0], name='bn/gamma')
  g = tf.constant([0.5, -0.5])
  for _ in range(2):
    opt.apply_gradients([(g, bias), (g, gamma)])
  # accum1 = lr*g, accum2 = m*lr*g + lr*g; w = w0 - accum1 - accum2.
  expected = np.array([1.0, 2.0]) - lr * (2 + m) * g.numpy()
  np.testing.assert_allclose(bias.numpy(), expected, rtol=1e-6)
  np.testing.assert_allclose(gamma.numpy(), expected, rtol=1e-6)


def test_clipnorm_applies_to_raw_gradient_before_lars():
  lr = 0.1
  opt = lars.PaperLARS(learning_rate=lr, momentum=0.9, eeta=1.0,
                       weight_decay=0.0, clipnorm=0.5)
  kernel = tf.Variable([3.0, 4.0], name='k/kernel')
  bias = tf.Variable([3.0, 4.0], name='k/bias')
  g = tf.constant([6.0, 8.0])  # norm 10, clipped to [0.3, 0.4]
  opt.apply_gradients([(g, kernel), (g, bias)])
  # Kernel: trust = 1 * 5 / 0.5 = 10 on the clipped gradient -> [3, 4].
  # (Clipping after LARS would give [0.3, 0.4].)
  np.testing.assert_allclose(kernel.numpy(), [3.0 - lr * 3.0, 4.0 - lr * 4.0],
                             rtol=1e-6)
  np.testing.assert_allclose(bias.numpy(), [3.0 - lr * 0.3, 4.0 - lr * 0.4],
                             rtol=1e-6)


def test_low_precision_and_sparse_gradients():
  w0 = np.array([[3.0, 4.0], [1.0, -2.0]], np.float32)
  g = np.array([[0.5, 0.25], [-1.0, 0.125]], np.float32)  # exact in bfloat16
  dense = tf.Variable(w0, name='a/kernel')
  sparse = tf.Variable(w0, name='b/kernel')
  opt = lars.PaperLARS(learning_rate=0.1, **HP)
  sparse_g = tf.IndexedSlices(tf.constant(g), tf.constant([0, 1]),
                              tf.constant([2, 2]))

  @tf.function
  def step():
    opt.apply_gradients(
        [(tf.constant(g, tf.bfloat16), dense), (sparse_g, sparse)])

  step()
  expected = ref_update(w0, g, 0 * w0, lr=0.1, skipped=False, **HP)[0]
  assert dense.dtype == tf.float32
  assert_close(dense.numpy(), expected)
  assert_close(sparse.numpy(), expected)


def test_mirrored_strategy_averages_before_trust():
  strategy = conftest.cpu_strategy(2)
  num_replicas = strategy.num_replicas_in_sync
  assert num_replicas == 2
  lr = 0.4
  with strategy.scope():
    model = make_model(seed=3)
    opt = lars.PaperLARS(learning_rate=lr, **HP)
  variables = model.trainable_variables
  check_names(variables)
  names = [v.name for v in variables]
  rng = np.random.default_rng(7)
  data = [make_data(rng) for _ in range(num_replicas)]
  dist_data = strategy.experimental_distribute_values_from_function(
      lambda ctx: data[ctx.replica_id_in_sync_group])

  @tf.function
  def train_step(batch):
    def step_fn(batch):
      x, y = batch
      with tf.GradientTape() as tape:
        # As Model Garden's tasks: the all-reduce sums, so divide the loss.
        loss = loss_fn(model, x, y) / num_replicas
      grads = tape.gradient(loss, variables)
      opt.apply_gradients(zip(grads, variables))
      return grads
    return strategy.run(step_fn, args=(batch,))

  init = {v.name: v.numpy() for v in variables}
  state = {n: (w, np.zeros(w.shape)) for n, w in init.items()}
  per_replica = train_step(dist_data)
  local = [[g.numpy() for g in strategy.experimental_local_results(pg)]
           for pg in per_replica]
  # The replicas saw different data.
  assert all(np.max(np.abs(gs[0] - gs[1])) > 1e-4 for gs in local)
  averaged = [sum(gs) for gs in local]  # each is already divided by 2
  ref_step(state, averaged, names, lr)
  for v in variables:
    for component in strategy.experimental_local_results(v):
      assert_close(component.numpy(), state[v.name][0], v.name)

  # LARS computed per replica and then averaged would be distinguishable.
  for name, gs in zip(names, local):
    if _skipped(name):
      continue
    naive = np.mean([ref_update(init[name], num_replicas * g, 0.0, lr=lr,
                                skipped=False, **HP)[0] for g in gs], axis=0)
    assert np.max(np.abs(naive - state[name][0])) > 100 * (
        ATOL + RTOL * np.max(np.abs(state[name][0]))), name


@pytest.mark.parametrize('num_replicas', [0, 2])
def test_works_inside_ema_wrapper(num_replicas):
  """Model Garden's EMA wrapper, without a strategy and mirrored on 2 CPUs."""
  strategy = (conftest.cpu_strategy(num_replicas) if num_replicas
              else tf.distribute.get_strategy())
  lr, decay = 0.3, 0.75
  with strategy.scope():
    model = make_model(seed=5)
    opt = ema_optimizer.ExponentialMovingAverage(
        lars.PaperLARS(learning_rate=lr, **HP), average_decay=decay,
        dynamic_decay=False)
    opt.shadow_copy(model)
  variables = model.trainable_variables
  names = [v.name for v in variables]
  scale = max(num_replicas, 1)

  @tf.function
  def train_step(x, y):
    def step_fn(x, y):
      with tf.GradientTape() as tape:
        loss = loss_fn(model, x, y) / scale
      grads = tape.gradient(loss, variables)
      opt.apply_gradients(zip(grads, variables))
      return [scale * g for g in grads]  # same data on every replica
    return strategy.run(step_fn, args=(x, y))

  state = {v.name: (v.numpy(), np.zeros(v.shape)) for v in variables}
  averages = {v.name: opt.get_slot(v, 'average').numpy() for v in variables}
  rng = np.random.default_rng(2)
  for _ in range(2):
    grads = [strategy.experimental_local_results(g)[0].numpy()
             for g in train_step(*make_data(rng))]
    ref_step(state, grads, names, lr)
    for name in names:
      averages[name] = averages[name] - (1 - decay) * (
          averages[name] - state[name][0])
  assert int(opt.iterations.numpy()) == 2
  for v in variables:
    for component in strategy.experimental_local_results(v):
      assert_close(component.numpy(), state[v.name][0], v.name)
    for component in strategy.experimental_local_results(
        opt.get_slot(v, 'average')):
      assert_close(component.numpy(), averages[v.name], v.name + ' average')


def test_config_round_trip_and_model_garden_config_names():
  cfg = configs.PaperLARSConfig(weight_decay=2e-5, epsilon=1e-9,
                                global_clipnorm=1.0).as_dict()
  for key in ('clipnorm', 'clipvalue', 'global_clipnorm'):
    if cfg[key] is None:
      del cfg[key]
  # As Model Garden's OptimizerFactory builds it.
  opt = lars.PaperLARS(**cfg, learning_rate=0.7)
  config = opt.get_config()
  assert config['weight_decay'] == 2e-5 and config['epsilon'] == 1e-9
  assert config['eeta'] == 0.001 and config['momentum'] == pytest.approx(0.9)
  assert config['global_clipnorm'] == 1.0
  assert config['skip_list'] == list(configs.LARS_SKIP_LIST)
  assert config['name'] == 'PaperLARS'
  assert config['learning_rate'] == pytest.approx(0.7)
  clone = lars.PaperLARS.from_config(dict(config))
  assert clone.get_config() == config
  assert clone.skip_list == opt.skip_list
  # A schedule round-trips too.
  schedule = tf_keras.optimizers.schedules.PolynomialDecay(0.5, 10)
  config = lars.PaperLARS(learning_rate=schedule).get_config()
  clone = lars.PaperLARS.from_config(dict(config))
  assert clone.get_config() == config
