"""LARS exactly as in the reference code of "Training EfficientNets at
Supercomputer Scale" (the TPU EfficientNet / MLPerf `lars_optimizer.py`).

For every variable `w` whose name contains none of `skip_list`, with its
(replica-averaged) gradient `g`:

    trust = eeta * ||w|| / (||g|| + weight_decay * ||w|| + epsilon)
            (1.0 where ||w|| == 0 or ||g|| == 0)
    accum = momentum * accum + lr * trust * (g + weight_decay * w)
    w     = w - accum

Skipped variables (batch norm, biases) get plain momentum SGD at the base LR
and no weight decay. Model Garden's `official.modeling.optimization.lars.LARS`
differs: it adds the weight decay to the gradient before taking its norm
(`||g + wd*w||`, no `wd*||w||` term in the denominator), has no epsilon, and
builds about ten small ops plus two unfused assigns per variable.

Implementation: the LARS part is a gradient transformation,
`g -> trust * (g + weight_decay * w)`, applied in `_transform_gradients`, the
legacy optimizer's hook that runs inside `apply_gradients` after the
cross-replica all-reduce (and after clipnorm/clipvalue/global_clipnorm and
any `gradient_transformers`), in replica context. The transformed gradients
then go through `SGD`'s fused `ResourceApplyKerasMomentum` kernel
(`accum = m * accum - lr * g'; w += accum`, i.e. the reference update with the
accumulator's sign flipped), so the momentum slot is `SGD`'s. The trust
ratios are vectorized: one `l2_loss` per tensor, stacked into one vector, and
the ratio/where math runs once on that vector; the skip mask is resolved from
variable names at trace time, so skipped variables cost nothing extra.
"""
from typing import Sequence

import tensorflow as tf
import tf_keras

_HALF_DTYPES = (tf.float16, tf.bfloat16)


class PaperLARS(tf_keras.optimizers.legacy.SGD):
  """Layer-wise adaptive rate scaling as in the paper's reference code."""

  def __init__(self,
               learning_rate=0.01,
               momentum: float = 0.9,
               eeta: float = 0.001,
               weight_decay: float = 1e-5,
               epsilon: float = 0.0,
               skip_list: Sequence[str] = ('batch_normalization', 'bias',
                                           'beta', 'gamma'),
               name: str = 'PaperLARS',
               **kwargs):
    """Creates the optimizer.

    Args:
      learning_rate: float, tensor, callable or
        `tf_keras.optimizers.schedules.LearningRateSchedule`: the base LR.
      momentum: momentum of the accumulator (no Nesterov).
      eeta: LARS coefficient.
      weight_decay: LARS weight decay, added to the gradient of non-skipped
        variables and to the trust-ratio denominator.
      epsilon: added to the trust-ratio denominator.
      skip_list: variables whose name contains any of these substrings get
        plain momentum SGD (no trust ratio, no weight decay).
      name: optimizer name.
      **kwargs: forwarded to the Keras legacy optimizer (`clipnorm`,
        `clipvalue`, `global_clipnorm`, `decay`, `gradient_aggregator`,
        `gradient_transformers`).
    """
    super().__init__(
        learning_rate=learning_rate,
        momentum=momentum,
        nesterov=False,
        name=name,
        **kwargs)
    if eeta < 0 or weight_decay < 0 or epsilon < 0:
      raise ValueError(
          'eeta, weight_decay and epsilon must be >= 0, got '
          f'eeta={eeta}, weight_decay={weight_decay}, epsilon={epsilon}')
    if isinstance(skip_list, str):
      raise TypeError(f'skip_list must be a sequence of strings, got '
                      f'{skip_list!r}')
    self.eeta = float(eeta)
    self.weight_decay = float(weight_decay)
    self.epsilon = float(epsilon)
    self.skip_list = tuple(skip_list or ())

  def _use_lars(self, var) -> bool:
    """Whether `var` gets the trust ratio and weight decay (trace-time)."""
    name = var.name
    return not any(s in name for s in self.skip_list)

  def _transform_gradients(self, grads_and_vars):
    """Clipping etc. (Keras), then the LARS transformation on the result."""
    grads_and_vars = super()._transform_gradients(grads_and_vars)
    return self._lars_transform(list(grads_and_vars))

  def _lars_transform(self, grads_and_vars):
    """Returns [(trust * (g + wd * w), w)], skipped variables unchanged."""
    lars_idx = [i for i, (g, v) in enumerate(grads_and_vars)
                if g is not None and self._use_lars(v)]
    if not lars_idx:
      return grads_and_vars
    with tf.name_scope('lars'):
      weights, grads = [], []
      for i in lars_idx:
        g, v = grads_and_vars[i]
        if isinstance(g, tf.IndexedSlices):
          g = tf.convert_to_tensor(g)  # densified by the weight decay anyway
        w = tf.convert_to_tensor(v)  # this replica's copy of a mirrored var
        if g.dtype != w.dtype:
          g = tf.cast(g, w.dtype)
        weights.append(w)
        grads.append(g)

      def sq_norm(x):
        # Squared norms are reduced in float32 at least (float16 overflows).
        if x.dtype in _HALF_DTYPES:
          x = tf.cast(x, tf.float32)
        return tf.cast(tf.nn.l2_loss(x), tf.float32)

      n = len(lars_idx)
      # One reduction op per tensor, one stacked vector for all of them.
      norms = tf.sqrt(2.0 * tf.stack([sq_norm(x) for x in weights + grads]))
      w_norm, g_norm = norms[:n], norms[n:]
      trust = self.eeta * w_norm / (
          g_norm + self.weight_decay * w_norm + self.epsilon)
      trust = tf.where(
          tf.logical_and(w_norm > 0.0, g_norm > 0.0), trust,
          tf.ones_like(trust))
      trusts = tf.unstack(trust, num=n)

      out = list(grads_and_vars)
      for k, i in enumerate(lars_idx):
        w, g, v = weights[k], grads[k], grads_and_vars[i][1]
        if self.weight_decay:
          g = g + tf.cast(self.weight_decay, w.dtype) * w
        out[i] = (tf.cast(trusts[k], w.dtype) * g, v)
    return out

  def get_config(self):
    config = super().get_config()
    config.pop('nesterov', None)  # always False; not a constructor argument
    config.update({
        'eeta': self.eeta,
        'weight_decay': self.weight_decay,
        'epsilon': self.epsilon,
        'skip_list': list(self.skip_list),
    })
    return config
