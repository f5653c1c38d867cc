"""Weight EMA as the reference code's `tf.train.ExponentialMovingAverage`.

The reference keeps `tf.train.ExponentialMovingAverage(0.9999,
num_updates=global_step)` of the trainable variables and the batch-norm moving
statistics, applied after each optimizer step:

    shadow starts at the variable's value
    n      = global_step after this step's increment (1 at the first update)
    decay  = min(average_decay, (1 + n) / (10 + n))
    shadow = shadow - (1 - decay) * (shadow - variable)

Model Garden's `ExponentialMovingAverage` wrapper applies the same rule after
the wrapped optimizer's update (its `iterations` is then already incremented,
so n agrees) but starts every shadow at 0: after the first step a shadow is
9/11 of its weight (18% off) where the reference's is within one step of it. `PaperExponentialMovingAverage` only changes where the
shadows start; update, `swap_weights`, the 'average' slots (`get_slot(var,
'average')`) and checkpointing (Model Garden's `EMACheckpointing` action) are
Model Garden's, and the class is a subclass so every Model Garden
`isinstance(optimizer, ExponentialMovingAverage)` check holds.
"""
import tensorflow as tf
import tf_keras

from official.modeling.optimization import ema_optimizer


def _value_of(var):
  """An initializer returning `var`'s current value (as a slot initial value).

  Under a MirroredStrategy the slot's first replica reads the (mirrored or
  replica-averaged) value and the other replicas copy it, so every replica's
  shadow starts equal to its variable. Going through the slot initializer, not
  an assign after creation, keeps a pending checkpoint restore of the slot
  (restore before `shadow_copy`) in charge.
  """
  def initializer(shape, dtype):
    del shape  # the slot has the variable's shape
    return tf.cast(var.read_value(), dtype)
  return initializer


class PaperExponentialMovingAverage(ema_optimizer.ExponentialMovingAverage):
  """Model Garden's EMA wrapper whose shadows start at the weights' values."""

  def shadow_copy(self, model: tf_keras.Model):
    """Creates the 'average' slots, each initialised to its variable's value.

    Same variables as Model Garden's `shadow_copy` (trainable ones, or all of
    `model.variables` when `trainable_weights_only=False`, which includes the
    batch-norm moving statistics as the reference's `get_ema_vars`).
    """
    if self._trainable_weights_only:
      self._model_weights = model.trainable_variables
    else:
      self._model_weights = model.variables
    for var in self._model_weights:
      self.add_slot(var, 'average', initializer=_value_of(var))
    self._average_weights = [
        self.get_slot(var, 'average') for var in self._model_weights
    ]
