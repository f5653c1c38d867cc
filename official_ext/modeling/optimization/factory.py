"""Registers the paper's optimizers and schedules with Model Garden's factory.

`paper_lars`, `paper_rmsprop` and `sm3` go through Model Garden's public
`register_optimizer_cls`. Model Garden keeps schedules in a dict with no
register function, so the per-256-scaled schedules are built by a subclass of
its `OptimizerFactory` that handles the two new schedule types and defers to
Model Garden for the rest. The same subclass wraps the optimizer in
`PaperExponentialMovingAverage` (shadows start at the weights, as the
reference's) where Model Garden's factory would use its own EMA wrapper.
"""
from official.modeling.optimization import optimizer_factory

from official_ext.modeling.optimization import configs
from official_ext.modeling.optimization import ema
from official_ext.modeling.optimization import lars
from official_ext.modeling.optimization import lr_schedule
from official_ext.modeling.optimization import rmsprop
from official_ext.modeling.optimization import sm3

PAPER_OPTIMIZERS = {
    'paper_lars': lars.PaperLARS,
    'paper_rmsprop': rmsprop.PaperRMSProp,
    'sm3': sm3.SM3,
}
for _name, _cls in PAPER_OPTIMIZERS.items():
  if _name not in optimizer_factory.LEGACY_OPTIMIZERS_CLS:
    optimizer_factory.register_optimizer_cls(_name, _cls)

_SCALED_SCHEDULES = {
    'scaled_polynomial': lr_schedule.ScaledPolynomialDecay,
    'scaled_exponential': lr_schedule.ScaledExponentialDecay,
}


def _check_lamb(config) -> None:
  """One-line errors for LAMB values Model Garden's LAMB does not check."""
  for field in ('beta_1', 'beta_2'):
    value = getattr(config, field)
    if not 0.0 <= value < 1.0:
      raise ValueError(f'lamb.{field} must be in [0, 1), got {value}')
  for field in ('epsilon', 'weight_decay_rate'):
    value = getattr(config, field)
    if value < 0:
      raise ValueError(f'lamb.{field} must be >= 0, got {value}')


class OptimizerFactory(optimizer_factory.OptimizerFactory):
  """Model Garden's OptimizerFactory with the scaled schedules and paper EMA."""

  def __init__(self, config: configs.OptimizationConfig):
    # Model Garden's factory would wrap in its zero-initialised EMA: it gets
    # the config without EMA and `build_optimizer` wraps the result.
    super().__init__(config.replace(ema=None) if config.ema else config)
    self._paper_ema_config = config.ema

  def build_learning_rate(self):
    if self._lr_type not in _SCALED_SCHEDULES:
      return super().build_learning_rate()
    if self._warmup_config:
      raise ValueError(
          f'learning_rate.type={self._lr_type!r} has its own warmup '
          '(warmup_epochs); leave optimizer_config.warmup unset, got '
          f'warmup.type={self._warmup_type!r}')
    return _SCALED_SCHEDULES[self._lr_type](**self._lr_config.as_dict())

  def build_optimizer(self, lr, postprocessor=None, **kwargs):
    """Model Garden's optimizer, EMA-wrapped as the reference if configured.

    Args:
      lr: learning rate or schedule.
      postprocessor: applied last, after the EMA wrapper (as Model Garden).
      **kwargs: Model Garden's `build_optimizer` arguments
        (`gradient_aggregator`, `gradient_transformers`,
        `use_legacy_optimizer`).
    """
    if self._optimizer_type == 'lamb':
      _check_lamb(self._optimizer_config)
    optimizer = super().build_optimizer(lr, **kwargs)
    if self._paper_ema_config:
      if not kwargs.get('use_legacy_optimizer', True):
        raise ValueError('EMA needs the legacy optimizer '
                         '(use_legacy_optimizer=True)')
      optimizer = ema.PaperExponentialMovingAverage(
          optimizer, **self._paper_ema_config.as_dict())
    if postprocessor:
      optimizer = postprocessor(optimizer)
    return optimizer


def build_optimizer(optimization_config: configs.OptimizationConfig):
  """Builds the (EMA-wrapped if configured) optimizer and its schedule."""
  factory = OptimizerFactory(optimization_config)
  return factory.build_optimizer(factory.build_learning_rate())
