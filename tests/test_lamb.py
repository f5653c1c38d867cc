"""Model Garden's `lamb`, as this project configures it, against a NumPy LAMB.

The NumPy reference is Algorithm 2 of You et al. 2019 ("Large Batch
Optimization for Deep Learning"): Adam moments with bias correction,
r = m_hat / (sqrt(v_hat) + eps), update = r + lambda * w, and
w -= lr * phi(||w||) / ||update|| * update with phi the identity (ratio 1 where
either norm is 0). Batch norm and bias variables (the `paper_lars` skip list)
get neither weight decay nor the trust ratio.
"""
import numpy as np
import pytest

from official.modeling.optimization import lamb
from official_ext.modeling.optimization import configs
from official_ext.modeling.optimization import factory
from tests import optimizer_reference as ref

LR = 0.01
BETA_1, BETA_2, EPS = 0.9, 0.999, 1e-6


def lamb_reference(weight_decay, skip=True, lr=LR):
  def update(step, weights, grads, state):
    t = step + 1
    out = []
    for i, (w, g) in enumerate(zip(weights, grads)):
      m, v = state.get(i, (np.zeros(w.shape), np.zeros(w.shape)))
      m = BETA_1 * m + (1 - BETA_1) * g
      v = BETA_2 * v + (1 - BETA_2) * g * g
      state[i] = (m, v)
      r = (m / (1 - BETA_1**t)) / (np.sqrt(v / (1 - BETA_2**t)) + EPS)
      excluded = skip and ref.ROLES[i] == 'skip'
      u = r if excluded else r + weight_decay * w
      ratio = 1.0
      if not excluded:
        w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(u)
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
      out.append(w - lr * ratio * u)
    return out

  return update


def build(weight_decay, **overrides):
  config = configs.OptimizationConfig({
      'optimizer': {'type': 'lamb', 'lamb': {
          'weight_decay_rate': weight_decay, 'beta_1': BETA_1,
          'beta_2': BETA_2, 'epsilon': EPS, **overrides}},
      'learning_rate': {'type': 'constant',
                        'constant': {'learning_rate': LR}}})
  opt = factory.build_optimizer(config)
  assert isinstance(opt, lamb.LAMB)
  return opt


@pytest.mark.parametrize('weight_decay', [0.0, 0.1])
def test_ten_steps_match_numpy_paper_update(weight_decay):
  tf_traj, np_traj, _ = ref.run(build(weight_decay),
                                lamb_reference(weight_decay))
  ref.assert_trajectories_close(tf_traj, np_traj)


def test_skip_list_is_the_lars_one_by_default():
  default = configs.OptimizationConfig().optimizer.lamb
  assert tuple(default.exclude_from_weight_decay) == tuple(
      default.exclude_from_layer_adaptation) == configs.LARS_SKIP_PATTERNS
  opt = build(0.1)
  for name in ('batch_normalization/gamma', 'stem_bn/beta', 'dense/bias'):
    assert not opt._do_use_weight_decay(name)  # pylint: disable=protected-access
    assert not opt._do_layer_adaptation(name)  # pylint: disable=protected-access
  assert opt._do_use_weight_decay('conv2d/kernel')  # pylint: disable=protected-access
  assert opt._do_layer_adaptation('conv2d/kernel')  # pylint: disable=protected-access


def test_without_skip_list_bn_and_bias_are_adapted():
  """Model Garden's own default (no exclusions) must not match the skip list."""
  opt = build(0.1, exclude_from_weight_decay=[],
              exclude_from_layer_adaptation=[])
  tf_traj, np_traj, _ = ref.run(opt, lamb_reference(0.1), steps=2)
  with pytest.raises(AssertionError):
    ref.assert_trajectories_close(tf_traj, np_traj)
  tf_traj, np_traj, _ = ref.run(build(0.1, exclude_from_weight_decay=[],
                                      exclude_from_layer_adaptation=[]),
                                lamb_reference(0.1, skip=False), steps=2)
  ref.assert_trajectories_close(tf_traj, np_traj)


@pytest.mark.parametrize('field,value', [('beta_1', 1.0), ('beta_2', -0.1),
                                         ('epsilon', -1.0),
                                         ('weight_decay_rate', -1e-5)])
def test_bad_values_are_one_line_errors(field, value):
  with pytest.raises(ValueError) as e:
    build(0.0, **{field: value})
  # Gin (Model Garden's configurable factory) appends its own context line.
  assert f'lamb.{field}' in str(e.value).splitlines()[0]
