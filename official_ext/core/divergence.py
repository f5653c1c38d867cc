"""Stops training cleanly when it diverges, before a bad checkpoint is saved.

Every train step reports its loss and gradient norm to a `DivergenceGuard`
(replica-local counters, no communication); at the end of each train loop,
before Orbit saves a checkpoint or evaluates, `check` raises
`TrainingDiverged` if any step of the loop had a non-finite loss or gradient
norm, or a loss above `trainer.loss_upper_bound`. The run then stops with one
line naming the first such step and its learning rate; the latest checkpoint
stays the last good one. (Model Garden's own recovery condition, off in this
project's experiments, would raise a traceback after the loop instead.)
"""
import math
from typing import Optional

import tensorflow as tf

# The key of a task's train-step output holding the replica's gradient norm.
GRADIENT_NORM = 'gradient_norm'


class TrainingDiverged(RuntimeError):
  """The loss or gradient norm became non-finite (or exceeded its bound)."""

  def __init__(self, step: int, learning_rate: Optional[float], loss: float,
               gradient_norm: float, loss_upper_bound: float):
    self.step, self.learning_rate = step, learning_rate
    if not math.isfinite(loss) or not math.isfinite(gradient_norm):
      what = (f'loss {loss:.6g}, gradient norm {gradient_norm:.6g} '
              '(non-finite)')
    else:
      what = f'loss {loss:.6g} above trainer.loss_upper_bound {loss_upper_bound:g}'
    lr = 'unknown' if learning_rate is None else f'{learning_rate:.6g}'
    super().__init__(f'training diverged at step {step} (learning rate {lr}): '
                     f'{what}')


class DivergenceGuard:
  """Replica-local record of the first bad step of the current train loop.

  Create it in the strategy's scope; call `update` in the train step (replica
  context) and `check` after the loop (cross-replica context).
  """

  def __init__(self, loss_upper_bound: float = math.inf):
    self.loss_upper_bound = float(loss_upper_bound)
    local = dict(trainable=False,
                 synchronization=tf.VariableSynchronization.ON_READ)
    self._bad_steps = tf.Variable(0.0, name='non_finite_steps',
                                  aggregation=tf.VariableAggregation.SUM,
                                  **local)
    # Per replica: (step, loss, gradient norm) of its first bad step, step -1
    # while there is none. Read replica by replica, never aggregated.
    self._first = tf.Variable([-1.0, 0.0, 0.0], name='first_bad_step',
                              aggregation=tf.VariableAggregation.SUM,
                              **local)

  def update(self, loss: tf.Tensor, gradient_norm: Optional[tf.Tensor],
             step: tf.Tensor) -> None:
    loss = tf.cast(loss, tf.float32)
    norm = (tf.constant(0.0) if gradient_norm is None
            else tf.cast(gradient_norm, tf.float32))
    bad = tf.logical_not(tf.math.is_finite(loss) & tf.math.is_finite(norm))
    bad |= loss > self.loss_upper_bound
    self._bad_steps.assign_add(tf.cast(bad, tf.float32))
    first_seen = bad & (self._first[0] < 0)
    self._first.assign(tf.where(
        first_seen, tf.stack([tf.cast(step, tf.float32), loss, norm]),
        self._first))

  def check(self, learning_rate_at=None) -> None:
    """Raises TrainingDiverged if a step since the last check was bad.

    `learning_rate_at(step)` gives the learning rate a step trained with.
    """
    if float(self._bad_steps.numpy()) == 0:
      return
    # The replicas' own copies (this worker's); a plain variable off-strategy.
    firsts = [v.numpy() for v in getattr(self._first, 'values',
                                         (self._first,))]
    step, loss, norm = min((f for f in firsts if f[0] >= 0),
                           key=lambda f: f[0])
    step = int(step)
    learning_rate = None
    if learning_rate_at is not None:
      learning_rate = float(learning_rate_at(step))
    raise TrainingDiverged(step, learning_rate, float(loss), float(norm),
                           self.loss_upper_bound)
