"""Optimization configs for the paper's recipe, extending Model Garden's oneofs.

Model Garden's `OptimizerConfig` and `LrConfig` are oneofs; a new optimizer or
schedule is added by subclassing them with one more field (the documented
extension point), so every Model Garden optimizer and schedule stays selectable.
"""
import dataclasses
from typing import List, Optional

from official.modeling.hyperparams import base_config
from official.modeling.optimization.configs import optimization_config
from official.modeling.optimization.configs import optimizer_config

# Substrings of variable names that skip LARS adaptation and weight decay, as in
# the reference code ('batch_normalization', 'bias', 'beta', 'gamma').
LARS_SKIP_LIST = ('batch_normalization', 'bias', 'beta', 'gamma')


@dataclasses.dataclass
class PaperLARSConfig(optimizer_config.BaseOptimizerConfig):
  """LARS exactly as the paper's reference code.

  trust = eeta * ||w|| / (||g|| + weight_decay * ||w|| + epsilon), 1 where
  ||w|| or ||g|| is 0; update = lr * trust * (g + weight_decay * w) through
  momentum (no Nesterov). Variables whose names contain an entry of
  `skip_list` get plain momentum SGD at the base learning rate.
  """
  name: str = 'PaperLARS'
  momentum: float = 0.9
  eeta: float = 0.001
  weight_decay: float = 1e-5
  epsilon: float = 0.0
  skip_list: List[str] = dataclasses.field(
      default_factory=lambda: list(LARS_SKIP_LIST))


@dataclasses.dataclass
class PaperRMSPropConfig(optimizer_config.RMSPropConfig):
  """RMSProp as the reference code's `tf.compat.v1.train.RMSPropOptimizer`.

  Same fields as Model Garden's `rmsprop`; the mean-square slot starts at 1
  (TF1) instead of 0, and epsilon is always inside the square root.
  """
  name: str = 'PaperRMSProp'
  rho: float = 0.9
  momentum: float = 0.9
  epsilon: float = 0.001


@dataclasses.dataclass
class ScaledScheduleBase(base_config.Config):
  """Fields shared by the per-256-scaled schedules.

  `lr_per_256` and `warmup_epochs` are the recipe; `global_batch_size`,
  `steps_per_epoch` and `train_steps` are derived from the task and trainer by
  `official_ext.core.recipe.resolve` and must not be set by hand.
  """
  lr_per_256: float = 0.1
  warmup_epochs: float = 0.0
  # Derived (see official_ext.core.recipe).
  global_batch_size: int = 0
  steps_per_epoch: float = 0.0
  train_steps: int = 0


@dataclasses.dataclass
class ScaledPolynomialConfig(ScaledScheduleBase):
  """Linear warmup from 0, then polynomial decay to `end_learning_rate`."""
  name: str = 'ScaledPolynomial'
  power: float = 2.0
  end_learning_rate: float = 0.1


@dataclasses.dataclass
class ScaledExponentialConfig(ScaledScheduleBase):
  """Linear warmup from 0, then `decay_rate` every `decay_epochs`."""
  name: str = 'ScaledExponential'
  decay_rate: float = 0.97
  decay_epochs: float = 2.4
  staircase: bool = True


@dataclasses.dataclass
class OptimizerConfig(optimization_config.OptimizerConfig):
  """Model Garden's optimizers plus the reference code's LARS and RMSProp."""
  paper_lars: PaperLARSConfig = dataclasses.field(
      default_factory=PaperLARSConfig)
  paper_rmsprop: PaperRMSPropConfig = dataclasses.field(
      default_factory=PaperRMSPropConfig)


@dataclasses.dataclass
class LrConfig(optimization_config.LrConfig):
  """Model Garden's schedules plus the paper's per-256-scaled schedules."""
  scaled_polynomial: ScaledPolynomialConfig = dataclasses.field(
      default_factory=ScaledPolynomialConfig)
  scaled_exponential: ScaledExponentialConfig = dataclasses.field(
      default_factory=ScaledExponentialConfig)


SCALED_SCHEDULES = ('scaled_polynomial', 'scaled_exponential')


@dataclasses.dataclass
class OptimizationConfig(optimization_config.OptimizationConfig):
  optimizer: OptimizerConfig = dataclasses.field(
      default_factory=OptimizerConfig)
  learning_rate: LrConfig = dataclasses.field(default_factory=LrConfig)
  ema: Optional[optimizer_config.EMAConfig] = None
