"""RMSProp as TF1's `tf.compat.v1.train.RMSPropOptimizer`, the reference code's.

The reference code trains its RMSProp rows with
`tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9,
epsilon=0.001)`. For every variable `w` with gradient `g`:

    ms  = rho * ms + (1 - rho) * g^2        (ms starts at 1)
    mom = momentum * mom + lr * g / sqrt(ms + epsilon)
    w   = w - mom

tf_keras's legacy `RMSprop` (Model Garden's `rmsprop`) runs the same fused
kernel (`ResourceApplyRMSProp`, epsilon inside the square root) but starts `ms`
at 0, so its first steps divide by sqrt(0.1 * g^2 + epsilon) instead of
sqrt(0.1 * g^2 + 0.9 + epsilon): up to ~30x larger updates for small gradients.
Without momentum it also moves epsilon outside the square root, where TF1
still uses the kernel. `PaperRMSProp` starts `ms` at 1 and always takes the
kernel path; slot names ('rms', 'momentum', 'mg') are Keras's.
"""
import tf_keras


class PaperRMSProp(tf_keras.optimizers.legacy.RMSprop):
  """RMSProp with TF1's slot initialisation (mean square starts at 1)."""

  def __init__(self,
               learning_rate=0.001,
               rho: float = 0.9,
               momentum: float = 0.9,
               epsilon: float = 1e-3,
               centered: bool = False,
               name: str = 'PaperRMSProp',
               **kwargs):
    """Creates the optimizer.

    Args:
      learning_rate: float, tensor, callable or
        `tf_keras.optimizers.schedules.LearningRateSchedule`.
      rho: decay of the mean square (TF1's `decay`).
      momentum: momentum of the update accumulator (0 allowed).
      epsilon: added to the mean square inside the square root.
      centered: subtract the squared mean gradient from the mean square.
      name: optimizer name.
      **kwargs: forwarded to the Keras legacy optimizer (`clipnorm`,
        `clipvalue`, `global_clipnorm`, `decay`).
    """
    super().__init__(learning_rate=learning_rate, rho=rho, momentum=momentum,
                     epsilon=epsilon, centered=centered, name=name, **kwargs)
    # Keras switches to an unfused update with epsilon outside the root when
    # momentum is 0; TF1 always runs the fused kernel with a momentum slot.
    self._momentum = True

  def _create_slots(self, var_list):
    for var in var_list:
      self.add_slot(var, 'rms', initializer='ones')
    for var in var_list:
      self.add_slot(var, 'momentum')
    if self.centered:
      for var in var_list:
        self.add_slot(var, 'mg')
