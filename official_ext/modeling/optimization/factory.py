"""Registers the paper's optimizer and schedules with Model Garden's factory.

`paper_lars` goes through Model Garden's public `register_optimizer_cls`.
Model Garden keeps schedules in a dict with no register function, so the
per-256-scaled schedules are built by a subclass of its `OptimizerFactory`
that handles the two new schedule types and defers to Model Garden for the rest.
"""
from official.modeling.optimization import optimizer_factory

from official_ext.modeling.optimization import configs
from official_ext.modeling.optimization import lars
from official_ext.modeling.optimization import lr_schedule

PAPER_LARS = 'paper_lars'

if PAPER_LARS not in optimizer_factory.LEGACY_OPTIMIZERS_CLS:
  optimizer_factory.register_optimizer_cls(PAPER_LARS, lars.PaperLARS)

_SCALED_SCHEDULES = {
    'scaled_polynomial': lr_schedule.ScaledPolynomialDecay,
    'scaled_exponential': lr_schedule.ScaledExponentialDecay,
}


class OptimizerFactory(optimizer_factory.OptimizerFactory):
  """Model Garden's OptimizerFactory that also builds the scaled schedules."""

  def build_learning_rate(self):
    if self._lr_type not in _SCALED_SCHEDULES:
      return super().build_learning_rate()
    if self._warmup_config:
      raise ValueError(
          f'learning_rate.type={self._lr_type!r} has its own warmup '
          '(warmup_epochs); leave optimizer_config.warmup unset, got '
          f'warmup.type={self._warmup_type!r}')
    return _SCALED_SCHEDULES[self._lr_type](**self._lr_config.as_dict())


def build_optimizer(optimization_config: configs.OptimizationConfig):
  """Builds the (EMA-wrapped if configured) optimizer and its schedule."""
  factory = OptimizerFactory(optimization_config)
  return factory.build_optimizer(factory.build_learning_rate())
