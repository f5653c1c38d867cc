"""SM3-II of "Memory-Efficient Adaptive Optimization" (Anil et al. 2019).

For a variable `w` of rank r >= 2 with shape [d_1, ..., d_r] and gradient `g`,
SM3 keeps one accumulator vector `a_i` of length d_i per axis (the cover: for
every axis, the slices along it), O(d_1 + ... + d_r) floats instead of Adagrad's
O(d_1 * ... * d_r). Each step:

    nu[j_1..j_r] = min_i a_i[j_i] + g[j_1..j_r]^2      (not stored)
    a_i[k]       = max over entries with j_i = k of nu  (for every axis i)
    gbar         = momentum * gbar + (1 - momentum) * g / sqrt(nu + epsilon)
    w            = w - lr * (gbar + weight_decay * w)

A k x n kernel keeps k + n accumulator floats; a conv kernel [h, w, cin, cout]
keeps h + w + cin + cout. Scalars and vectors (biases, batch norm) keep one
accumulator of their own size (nu = a + g^2, diagonal Adagrad), as the paper.

Variant: the google-research `sm3` TF1 optimizer's. Momentum is an
exponential average with a (1 - momentum) factor on the new preconditioned
gradient, and no momentum slot exists when momentum is 0; epsilon (1e-30 there)
sits inside the square root only to keep 0 / 0 at 0; the optional weight decay
is added to the update after momentum, skipped for variables whose name
contains an entry of `skip_list` (by default the `paper_lars` skip list). The
paper itself has no weight decay, so the skip list only matters when
`weight_decay` > 0. Sparse gradients are densified (as on TPU, where the
paper's runs were made); the accumulators are not an EMA (beta2 = 1).
"""
from typing import Sequence

import tensorflow as tf
import tf_keras

from official_ext.modeling.optimization import configs


def accumulator_slot_names(rank: int):
  """The accumulator slot names of a variable of rank `rank`."""
  if rank <= 1:
    return ['accumulator']
  return [f'accumulator_{i}' for i in range(rank)]


class SM3(tf_keras.optimizers.legacy.Optimizer):
  """SM3-II with optional momentum and decoupled weight decay."""

  def __init__(self,
               learning_rate=0.1,
               momentum: float = 0.9,
               weight_decay: float = 0.0,
               epsilon: float = 1e-30,
               skip_list: Sequence[str] = configs.LARS_SKIP_LIST,
               name: str = 'SM3',
               **kwargs):
    """Creates the optimizer.

    Args:
      learning_rate: float, tensor, callable or
        `tf_keras.optimizers.schedules.LearningRateSchedule`.
      momentum: in [0, 1); 0 keeps no momentum slot.
      weight_decay: >= 0, added to the update (times the weights) of variables
        not in `skip_list`.
      epsilon: >= 0, added to nu inside the square root.
      skip_list: variables whose name contains any of these substrings get no
        weight decay.
      name: optimizer name.
      **kwargs: forwarded to the Keras legacy optimizer (`clipnorm`,
        `clipvalue`, `global_clipnorm`, `decay`).
    """
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f'sm3.momentum must be in [0, 1), got {momentum}')
    if weight_decay < 0 or epsilon < 0:
      raise ValueError('sm3.weight_decay and sm3.epsilon must be >= 0, got '
                       f'weight_decay={weight_decay}, epsilon={epsilon}')
    if isinstance(skip_list, str):
      raise TypeError(f'sm3.skip_list must be a list of strings, got '
                      f'{skip_list!r}')
    super().__init__(name, **kwargs)
    self._set_hyper('learning_rate', kwargs.get('lr', learning_rate))
    self._set_hyper('decay', self._initial_decay)
    self.momentum = float(momentum)
    self.weight_decay = float(weight_decay)
    self.epsilon = float(epsilon)
    self.skip_list = tuple(skip_list or ())

  def _use_weight_decay(self, var) -> bool:
    return bool(self.weight_decay) and not any(
        s in var.name for s in self.skip_list)

  def _create_slots(self, var_list):
    for var in var_list:
      rank = var.shape.rank
      if rank <= 1:
        self.add_slot(var, 'accumulator')
      else:
        for i, name in enumerate(accumulator_slot_names(rank)):
          self.add_slot(var, name, shape=[var.shape[i]])
    if self.momentum:
      for var in var_list:
        self.add_slot(var, 'momentum')

  def _resource_apply_dense(self, grad, var, apply_state=None):
    var_device, var_dtype = var.device, var.dtype.base_dtype
    coefficients = (apply_state or {}).get(
        (var_device, var_dtype)) or self._fallback_apply_state(
            var_device, var_dtype)
    lr = coefficients['lr_t']
    rank = var.shape.rank
    g2 = grad * grad
    if rank <= 1:
      acc = self.get_slot(var, 'accumulator')
      nu = acc + g2
      updates = [acc.assign(nu, use_locking=self._use_locking)]
    else:
      accs = [self.get_slot(var, n) for n in accumulator_slot_names(rank)]
      past = None
      for i, acc in enumerate(accs):
        shape = [1] * rank
        shape[i] = -1
        a = tf.reshape(acc, shape)
        past = a if past is None else tf.minimum(past, a)
      nu = past + g2
      updates = []
      for i, acc in enumerate(accs):
        axes = [j for j in range(rank) if j != i]
        updates.append(acc.assign(tf.reduce_max(nu, axis=axes),
                                  use_locking=self._use_locking))
    step = grad * tf.math.rsqrt(nu + tf.cast(self.epsilon, var_dtype))
    if self.momentum:
      m = tf.cast(self.momentum, var_dtype)
      mom = self.get_slot(var, 'momentum')
      step = mom.assign(m * mom + (1.0 - m) * step,
                        use_locking=self._use_locking)
      updates.append(step)
    if self._use_weight_decay(var):
      step = step + tf.cast(self.weight_decay, var_dtype) * var
    updates.append(var.assign_sub(lr * step, use_locking=self._use_locking))
    return tf.group(*updates)

  def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
    dense = tf.convert_to_tensor(
        tf.IndexedSlices(grad, indices, tf.shape(var, out_type=indices.dtype)))
    return self._resource_apply_dense(dense, var, apply_state)

  def get_config(self):
    config = super().get_config()
    config.update({
        'learning_rate': self._serialize_hyperparameter('learning_rate'),
        'decay': self._initial_decay,
        'momentum': self.momentum,
        'weight_decay': self.weight_decay,
        'epsilon': self.epsilon,
        'skip_list': list(self.skip_list),
    })
    return config
