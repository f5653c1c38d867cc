"""SM3-II against a NumPy implementation of the paper's update, its memory
claim, its skip list, and its registration in the optimizer factory."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official_ext.modeling.optimization import configs
from official_ext.modeling.optimization import factory
from official_ext.modeling.optimization import sm3
from tests import optimizer_reference as ref

LR = 0.05


def sm3_reference(momentum, weight_decay, lr=LR):
  """The paper's SM3-II (one accumulator per axis, full one for vectors)."""

  def update(step, weights, grads, state):
    del step
    out = []
    for i, (w, g) in enumerate(zip(weights, grads)):
      accs = state.setdefault(('acc', i), (
          [np.zeros(w.shape)] if w.ndim <= 1 else
          [np.zeros(d) for d in w.shape]))
      if w.ndim <= 1:
        nu = accs[0] + g * g
        accs[0] = nu
      else:
        # nu(j) = min over the sets S_r containing j of mu(r), plus g(j)^2.
        nu = np.full(w.shape, np.inf)
        for index in np.ndindex(*w.shape):
          nu[index] = min(accs[axis][j] for axis, j in enumerate(index))
        nu = nu + g * g
        # mu(r) = max over j in S_r of nu(j).
        for axis in range(w.ndim):
          for j in range(w.shape[axis]):
            accs[axis][j] = np.take(nu, j, axis=axis).max()
      step_ = np.where(nu > 0, g / np.sqrt(np.where(nu > 0, nu, 1)), 0)
      if momentum:
        mom = state.get(('mom', i), np.zeros(w.shape))
        mom = momentum * mom + (1 - momentum) * step_
        state[('mom', i)] = mom
        step_ = mom
      if weight_decay and ref.ROLES[i] == 'kernel':
        step_ = step_ + weight_decay * w
      out.append(w - lr * step_)
    return out

  return update


@pytest.mark.parametrize('momentum,weight_decay',
                         [(0.0, 0.0), (0.9, 0.0), (0.9, 0.1)])
def test_ten_steps_match_numpy_paper_update(momentum, weight_decay):
  opt = sm3.SM3(learning_rate=LR, momentum=momentum, weight_decay=weight_decay)
  tf_traj, np_traj, _ = ref.run(opt, sm3_reference(momentum, weight_decay))
  ref.assert_trajectories_close(tf_traj, np_traj)


def test_reference_is_sensitive_to_the_cover():
  """A diagonal-Adagrad update (no cover) must not pass as SM3."""
  def adagrad(step, weights, grads, state):
    del step
    out = []
    for i, (w, g) in enumerate(zip(weights, grads)):
      acc = state.get(i, np.zeros(w.shape)) + g * g
      state[i] = acc
      out.append(w - LR * np.where(acc > 0, g, 0) / np.sqrt(
          np.where(acc > 0, acc, 1)))
    return out
  opt = sm3.SM3(learning_rate=LR, momentum=0.0)
  tf_traj, np_traj, _ = ref.run(opt, adagrad, steps=3)
  with pytest.raises(AssertionError):
    ref.assert_trajectories_close(tf_traj, np_traj)


def _slots_of(opt, var):
  names = [n for n in opt.get_slot_names()]
  out = {}
  for n in names:
    try:
      out[n] = opt.get_slot(var, n)
    except KeyError:
      pass
  return out


@pytest.mark.parametrize('momentum', [0.0, 0.9])
def test_memory_is_sum_of_dimensions(momentum):
  kernel = tf.Variable(tf.ones([7, 5]), name='dense/kernel')
  conv = tf.Variable(tf.ones([3, 3, 4, 6]), name='conv/kernel')
  bias = tf.Variable(tf.ones([5]), name='dense/bias')
  opt = sm3.SM3(learning_rate=0.1, momentum=momentum)
  variables = [kernel, conv, bias]
  opt.apply_gradients([(tf.ones_like(v), v) for v in variables])
  extra = {id(v): int(np.prod(v.shape)) if momentum else 0 for v in variables}
  sizes = {id(v): sum(int(np.prod(s.shape)) for s in _slots_of(opt, v).values())
           for v in variables}
  assert sizes[id(kernel)] == 7 + 5 + extra[id(kernel)]
  assert sizes[id(conv)] == 3 + 3 + 4 + 6 + extra[id(conv)]
  assert sizes[id(bias)] == 5 + extra[id(bias)]
  if not momentum:
    assert 'momentum' not in opt.get_slot_names()


def test_skip_list_exempts_bn_and_bias_from_weight_decay():
  variables = [tf.Variable(tf.fill(s, 2.0), name=n) for n, s in (
      ('dense/kernel', [3, 2]), ('dense/bias', [2]),
      ('batch_normalization/gamma', [2]), ('batch_normalization/beta', [2]))]
  grads = [tf.fill(v.shape, 0.5) for v in variables]

  def one_step(weight_decay):
    vs = [tf.Variable(v.numpy(), name=v.name.split(':')[0]) for v in variables]
    opt = sm3.SM3(learning_rate=0.1, momentum=0.0, weight_decay=weight_decay)
    opt.apply_gradients(zip(grads, vs))
    return [v.numpy() for v in vs]

  plain, decayed = one_step(0.0), one_step(0.5)
  assert not np.allclose(plain[0], decayed[0])  # the kernel is decayed
  for p, d in zip(plain[1:], decayed[1:]):
    np.testing.assert_array_equal(p, d)
  assert tuple(configs.SM3Config().skip_list) == configs.LARS_SKIP_LIST


def test_factory_builds_sm3_from_config():
  config = configs.OptimizationConfig({
      'optimizer': {'type': 'sm3', 'sm3': {'momentum': 0.5}},
      'learning_rate': {'type': 'constant',
                        'constant': {'learning_rate': 0.2}}})
  opt = factory.build_optimizer(config)
  assert isinstance(opt, sm3.SM3) and opt.momentum == 0.5
  assert isinstance(opt, tf_keras.optimizers.legacy.Optimizer)


@pytest.mark.parametrize('field,value', [('momentum', 1.0),
                                         ('weight_decay', -1.0),
                                         ('epsilon', -1.0)])
def test_bad_values_are_one_line_errors(field, value):
  config = configs.OptimizationConfig({
      'optimizer': {'type': 'sm3', 'sm3': {field: value}},
      'learning_rate': {'type': 'constant'}})
  with pytest.raises(ValueError) as e:
    factory.build_optimizer(config)
  # Gin (Model Garden's configurable factory) appends its own context line.
  assert f'sm3.{field}' in str(e.value).splitlines()[0]


def test_config_round_trip():
  opt = sm3.SM3(learning_rate=0.3, momentum=0.5, weight_decay=1e-4,
                skip_list=['bias'], global_clipnorm=1.0)
  config = opt.get_config()
  assert config['momentum'] == 0.5 and config['weight_decay'] == 1e-4
  assert config['skip_list'] == ['bias'] and config['global_clipnorm'] == 1.0
  assert config['learning_rate'] == pytest.approx(0.3)
  assert sm3.SM3.from_config(dict(config)).get_config() == config
