"""GroupedBatchNormalization on 8 logical CPU replicas under MirroredStrategy.

Every replica gets a different input (different means per replica and per
channel). A replica's batch statistics are read back from its own copy of the
moving statistics (ON_READ variables: one copy per replica). References: NumPy
statistics and a single-device tf_keras BatchNormalization on the group's
concatenated batch; tf_keras BatchNormalization for group size 1 and
BatchNormalization(synchronized=True) for one group of all replicas.
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official_ext.modeling.layers import grouped_batch_norm as gbn
from tests import conftest

NUM_REPLICAS = 8
SHAPE = (2, 3, 3, 4)  # Per-replica NHWC batch.
CHANNELS = SHAPE[-1]
RTOL, ATOL = 1e-5, 1e-5

_rng = np.random.default_rng(42)
X = (_rng.standard_normal((NUM_REPLICAS,) + SHAPE) * _rng.uniform(
    0.5, 2.0, (NUM_REPLICAS, 1, 1, 1, CHANNELS))
     + _rng.uniform(-3, 3, (NUM_REPLICAS, 1, 1, 1, CHANNELS))).astype(
         np.float32)
W = _rng.standard_normal((NUM_REPLICAS,) + SHAPE).astype(np.float32)
GAMMA = _rng.uniform(0.5, 1.5, CHANNELS).astype(np.float32)
BETA = _rng.standard_normal(CHANNELS).astype(np.float32)
PARAMS = dict(gamma_initializer=tf_keras.initializers.Constant(GAMMA),
              beta_initializer=tf_keras.initializers.Constant(BETA))


@pytest.fixture(scope='module')
def strategy():
  return conftest.cpu_strategy(NUM_REPLICAS)


def close(actual, expected, what=''):
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL,
                             err_msg=what)


def _local(strategy, value):
  return np.stack([np.asarray(v) for v in
                   strategy.experimental_local_results(value)])


def run_replicas(strategy, make_layer, use_function=True):
  """One training-mode call per replica; returns per-replica results."""
  with strategy.scope():
    layer = make_layer()
    layer.build((None,) + SHAPE[1:])

  def per_replica(array):
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group]))

  def step(x, w):
    def fn(xi, wi):
      with tf.GradientTape() as tape:
        tape.watch(xi)
        y = layer(xi, training=True)
        loss = tf.reduce_sum(y * wi)
      gx, ggamma, gbeta = tape.gradient(loss, [xi, layer.gamma, layer.beta])
      return y, gx, ggamma, gbeta
    return strategy.run(fn, (x, w))

  if use_function:
    step = tf.function(step)
  y, gx, ggamma, gbeta = step(per_replica(X), per_replica(W))
  return layer, dict(
      y=_local(strategy, y), gx=_local(strategy, gx),
      ggamma=_local(strategy, ggamma), gbeta=_local(strategy, gbeta),
      mean=_local(strategy, layer.moving_mean),
      var=_local(strategy, layer.moving_variance))


def reference(members, momentum, fused=False):
  """tf_keras BN on the concatenated batch of the replicas `members`."""
  x = tf.constant(X[members].reshape((-1,) + SHAPE[1:]))
  w = tf.constant(W[members].reshape((-1,) + SHAPE[1:]))
  layer = tf_keras.layers.BatchNormalization(momentum=momentum, fused=fused,
                                             **PARAMS)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=True)
    loss = tf.reduce_sum(y * w)
  gx, ggamma, gbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
  split = lambda t: np.asarray(t).reshape((len(members),) + SHAPE)
  return dict(y=split(y), gx=split(gx), ggamma=ggamma.numpy(),
              gbeta=gbeta.numpy(), mean=layer.moving_mean.numpy(),
              var=layer.moving_variance.numpy())


def check_against_groups(out, groups, momentum):
  """Per replica: stats, outputs, grads and moving stats of its group."""
  for members in groups:
    ref = reference(members, momentum)
    batch = X[members].reshape(-1, CHANNELS).astype(np.float64)
    for k, r in enumerate(members):
      what = f'replica {r} of group {members}'
      # (a) batch statistics (moving = m * init + (1 - m) * batch stat,
      # init 0 and 1; the grouped path uses the biased variance).
      close((out['mean'][r] - 0.0) / (1 - momentum), batch.mean(0), what)
      close((out['var'][r] - momentum) / (1 - momentum), batch.var(0), what)
      # (b) outputs and this replica's slice of the input gradient.
      close(out['y'][r], ref['y'][k], what)
      close(out['gx'][r], ref['gx'][k], what)
      # (c) moving statistics as tf_keras BN updates them.
      close(out['mean'][r], ref['mean'], what)
      close(out['var'][r], ref['var'], what)
    # gamma/beta gradients are per replica (summed later by the optimizer).
    close(out['ggamma'][members].sum(0), ref['ggamma'], f'group {members}')
    close(out['gbeta'][members].sum(0), ref['gbeta'], f'group {members}')


@pytest.mark.parametrize('group_size', [2, 4, 8])
def test_contiguous_groups_match_group_reference(strategy, group_size):
  layer, out = run_replicas(strategy, lambda: gbn.GroupedBatchNormalization(
      group_size=group_size, momentum=0.5, **PARAMS))
  assert not layer.fused
  groups = [list(range(s, s + group_size))
            for s in range(0, NUM_REPLICAS, group_size)]
  check_against_groups(out, groups, momentum=0.5)


def test_explicit_strided_assignment(strategy):
  groups = [[0, 2, 4, 6], [1, 3, 5, 7]]
  _, out = run_replicas(strategy, lambda: gbn.GroupedBatchNormalization(
      group_size=4, group_assignment=groups, momentum=0.5, **PARAMS))
  check_against_groups(out, groups, momentum=0.5)


def test_eager_strategy_run(strategy):
  _, out = run_replicas(strategy, lambda: gbn.GroupedBatchNormalization(
      group_size=2, momentum=0.5, **PARAMS), use_function=False)
  check_against_groups(out, [[0, 1], [2, 3], [4, 5], [6, 7]], momentum=0.5)


def test_default_momentum_and_epsilon(strategy):
  layer, out = run_replicas(strategy, lambda: gbn.GroupedBatchNormalization(
      group_size=4, **PARAMS))
  assert (layer.momentum, layer.epsilon) == (0.99, 1e-3)
  for r in range(NUM_REPLICAS):
    batch = X[r // 4 * 4:r // 4 * 4 + 4].reshape(-1, CHANNELS)
    close(out['mean'][r], 0.99 * 0.0 + 0.01 * batch.mean(0))
    close(out['var'][r], 0.99 * 1.0 + 0.01 * batch.var(0))


def test_group_size_1_is_plain_batch_norm(strategy):
  layer, out = run_replicas(strategy, lambda: gbn.GroupedBatchNormalization(
      momentum=0.5, **PARAMS))
  assert layer.fused  # Exactly tf_keras BN: the fused kernel is allowed.
  _, plain = run_replicas(strategy, lambda: tf_keras.layers.BatchNormalization(
      momentum=0.5, **PARAMS))
  for key in out:
    close(out[key], plain[key], key)
  for r in range(NUM_REPLICAS):
    ref = reference([r], 0.5, fused=True)
    close(out['y'][r], ref['y'][0])
    close(out['gx'][r], ref['gx'][0])
    # The fused kernel's moving variance uses the Bessel-corrected variance.
    n = X[r].size // CHANNELS
    close((out['var'][r] - 0.5) / 0.5,
          X[r].reshape(-1, CHANNELS).var(0) * n / (n - 1))


def test_one_group_matches_synchronized_batch_norm(strategy):
  _, out = run_replicas(strategy, lambda: gbn.GroupedBatchNormalization(
      group_size=NUM_REPLICAS, momentum=0.5, **PARAMS))
  _, sync = run_replicas(strategy, lambda: tf_keras.layers.BatchNormalization(
      synchronized=True, momentum=0.5, **PARAMS))
  for key in out:
    close(out[key], sync[key], key)


def test_bad_group_size(strategy):
  for size in (3, 16):
    with strategy.scope():
      layer = gbn.GroupedBatchNormalization(group_size=size)
      with pytest.raises(ValueError, match=f'group_size={size} does not '
                         'divide the 8 replicas in sync'):
        layer.build((None, 3, 3, 4))
  with strategy.scope():
    layer = gbn.GroupedBatchNormalization(group_size=2,
                                          group_assignment=[[0, 1], [2, 3]])
    with pytest.raises(ValueError, match='group_assignment covers 4 '
                       'replicas, but 8 are in sync'):
      layer.build((None, 3, 3, 4))
  with pytest.raises(ValueError, match='group_size must be >= 1, got 0'):
    gbn.GroupedBatchNormalization(group_size=0)
  with pytest.raises(ValueError, match='fused=True is not supported with '
                     'group_size=2'):
    gbn.GroupedBatchNormalization(group_size=2, fused=True)
  with pytest.raises(ValueError, match=r'group_assignment has groups of '
                     r'sizes \[2\], but group_size=4'):
    gbn.GroupedBatchNormalization(group_size=4, group_assignment=[[0, 1],
                                                                  [2, 3]])
  with pytest.raises(ValueError, match='replica 1 is in groups 0 and 1'):
    gbn.GroupedBatchNormalization(group_size=2, group_assignment=[[0, 1],
                                                                  [1, 2]])


@pytest.mark.parametrize('group_size', [1, 4])
def test_no_strategy_is_plain_batch_norm(group_size):
  x = tf.constant(X[:2].reshape((-1,) + SHAPE[1:]))
  layer = gbn.GroupedBatchNormalization(group_size=group_size, momentum=0.5,
                                        **PARAMS)
  plain = tf_keras.layers.BatchNormalization(
      momentum=0.5, fused=None if group_size == 1 else False, **PARAMS)
  results = []
  for bn in (layer, plain):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = bn(x, training=True)
      loss = tf.reduce_sum(y * W[:2].reshape(y.shape))
    results.append([y, tape.gradient(loss, x), bn.moving_mean,
                    bn.moving_variance])
  for ours, theirs in zip(*results):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  y_inference = layer(x, training=False)
  np.testing.assert_array_equal(y_inference, plain(x, training=False))


def test_name_and_config():
  layer = gbn.GroupedBatchNormalization(group_size=2,
                                        group_assignment=[[0, 2], [1, 3]])
  layer(tf.zeros([2, 4]))  # Built by __call__, inside the layer's scope.
  assert 'batch_normalization' in layer.name
  assert all('batch_normalization' in v.name for v in layer.weights)
  config = layer.get_config()
  assert config['group_size'] == 2
  assert config['group_assignment'] == [[0, 2], [1, 3]]
  clone = gbn.GroupedBatchNormalization.from_config(config)
  assert (clone.group_size, clone.group_assignment) == (2, [[0, 2], [1, 3]])
  assert (clone.momentum, clone.epsilon) == (0.99, 1e-3)
  assert clone.get_config() == config
