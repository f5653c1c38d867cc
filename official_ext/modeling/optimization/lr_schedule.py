"""The paper's learning-rate schedules: per-256 scaling, linear warmup, decay.

scaled_lr = lr_per_256 * global_batch_size / 256. For step < warmup_steps
(= int(warmup_epochs * steps_per_epoch)) the LR rises linearly from 0:
scaled_lr * step / warmup_steps. After warmup:
  - polynomial (LARS rows), exactly as the reference's `poly` schedule:
    (scaled_lr - end) * (1 - p)^power + end with
    p = min(max(step - warmup_steps, 1), decay_steps) / decay_steps and
    decay_steps = train_steps - warmup_steps + 1. The reference counts the
    first decay step as 1 and decays over one step more than remains, so the
    peak right after warmup is already one step down (20.729, not 20.736, for
    the 65k row) and `end` is reached at step train_steps + 1, after the last
    training step (train_steps - 1);
  - exponential (RMSProp rows): scaled_lr * decay_rate^(step / decay_steps),
    decay_steps = decay_epochs * steps_per_epoch, exponent floored when
    staircase; counted from step 0 as the reference code does.

Model Garden's `LinearWarmup` ramps to the decayed schedule's value at the end
of warmup rather than to scaled_lr, so these are small classes of their own.
"""
import tensorflow as tf
import tf_keras


def scaled_learning_rate(lr_per_256: float, global_batch_size: int) -> float:
  return lr_per_256 * global_batch_size / 256.0


class _ScaledWarmupSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
  """Per-256 scaling and linear warmup from 0; subclasses define the decay."""

  def __init__(self, lr_per_256: float, global_batch_size: int,
               steps_per_epoch: float, train_steps: int, warmup_epochs: float,
               name: str):
    super().__init__()
    if global_batch_size <= 0 or steps_per_epoch <= 0 or train_steps <= 0:
      raise ValueError(
          f'{name}: global_batch_size={global_batch_size}, steps_per_epoch='
          f'{steps_per_epoch} and train_steps={train_steps} must be > 0 '
          '(they are derived by official_ext.core.recipe.resolve)')
    self.lr_per_256 = lr_per_256
    self.global_batch_size = global_batch_size
    self.steps_per_epoch = steps_per_epoch
    self.train_steps = train_steps
    self.warmup_epochs = warmup_epochs
    self.name = name
    self.scaled_lr = scaled_learning_rate(lr_per_256, global_batch_size)
    self.warmup_steps = int(warmup_epochs * steps_per_epoch)

  def _decayed(self, step: tf.Tensor) -> tf.Tensor:
    raise NotImplementedError

  def __call__(self, step):
    with tf.name_scope(self.name):
      step = tf.cast(step, tf.float32)
      decayed = self._decayed(step)
      if self.warmup_steps <= 0:
        return decayed
      warmup = self.scaled_lr * step / float(self.warmup_steps)
      return tf.where(step < self.warmup_steps, warmup, decayed)

  def get_config(self):
    return {
        'lr_per_256': self.lr_per_256,
        'global_batch_size': self.global_batch_size,
        'steps_per_epoch': self.steps_per_epoch,
        'train_steps': self.train_steps,
        'warmup_epochs': self.warmup_epochs,
        'name': self.name,
    }


class ScaledPolynomialDecay(_ScaledWarmupSchedule):
  """Warmup, then polynomial decay over the remaining steps (LARS rows)."""

  def __init__(self, lr_per_256, global_batch_size, steps_per_epoch,
               train_steps, warmup_epochs=0.0, power=2.0,
               end_learning_rate=0.1, name='ScaledPolynomial'):
    super().__init__(lr_per_256, global_batch_size, steps_per_epoch,
                     train_steps, warmup_epochs, name)
    self.power = power
    self.end_learning_rate = end_learning_rate
    # The reference's off-by-one conventions (see the module docstring).
    self.decay_steps = max(train_steps - self.warmup_steps, 0) + 1

  def _decayed(self, step):
    progress = tf.clip_by_value(step - self.warmup_steps, 1.0,
                                float(self.decay_steps)) / self.decay_steps
    return ((self.scaled_lr - self.end_learning_rate) *
            tf.pow(1.0 - progress, self.power) + self.end_learning_rate)

  def get_config(self):
    return dict(super().get_config(), power=self.power,
                end_learning_rate=self.end_learning_rate)


class ScaledExponentialDecay(_ScaledWarmupSchedule):
  """Warmup, then `decay_rate` every `decay_epochs` (RMSProp rows)."""

  def __init__(self, lr_per_256, global_batch_size, steps_per_epoch,
               train_steps, warmup_epochs=0.0, decay_rate=0.97,
               decay_epochs=2.4, staircase=True, name='ScaledExponential'):
    super().__init__(lr_per_256, global_batch_size, steps_per_epoch,
                     train_steps, warmup_epochs, name)
    if decay_epochs <= 0:
      raise ValueError(f'{name}: decay_epochs={decay_epochs} must be > 0')
    self.decay_rate = decay_rate
    self.decay_epochs = decay_epochs
    self.staircase = staircase
    self.decay_steps = decay_epochs * steps_per_epoch

  def _decayed(self, step):
    exponent = step / self.decay_steps
    if self.staircase:
      exponent = tf.floor(exponent)
    return self.scaled_lr * tf.pow(self.decay_rate, exponent)

  def get_config(self):
    return dict(super().get_config(), decay_rate=self.decay_rate,
                decay_epochs=self.decay_epochs, staircase=self.staircase)
