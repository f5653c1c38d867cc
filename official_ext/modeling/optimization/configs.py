"""Optimization configs for the paper's recipe, extending Model Garden's oneofs.

Model Garden's `OptimizerConfig` and `LrConfig` are oneofs; a new optimizer or
schedule is added by subclassing them with one more field (the documented
extension point), so every Model Garden optimizer and schedule stays selectable.
"""
import dataclasses
import re
from typing import List, Optional

from official.modeling.hyperparams import base_config
from official.modeling.optimization.configs import optimization_config
from official.modeling.optimization.configs import optimizer_config

# Substrings of variable names that skip LARS adaptation and weight decay, as in
# the reference code ('batch_normalization', 'bias', 'beta', 'gamma').
LARS_SKIP_LIST = ('batch_normalization', 'bias', 'beta', 'gamma')
# The same list as the regex patterns Model Garden's LAMB matches with
# `re.search` (each a literal substring).
LARS_SKIP_PATTERNS = tuple(re.escape(s) for s in LARS_SKIP_LIST)


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
class LAMBConfig(optimizer_config.LAMBConfig):
  """Model Garden's `lamb` with the `paper_lars` skip list by default.

  Model Garden's LAMB computes the paper's update (Adam moments with bias
  correction, `weight_decay_rate * w` added to the update, trust ratio
  ||w|| / ||update||, 1 where either norm is 0); its config only lacks the
  skip list: here batch norm and bias variables are excluded from weight decay
  and from layer adaptation, and the weight decay is `paper_lars`'s. Note that
  Model Garden uses `exclude_from_weight_decay` for layer adaptation too when
  `exclude_from_layer_adaptation` is empty.
  """
  weight_decay_rate: float = 1e-5
  exclude_from_weight_decay: Optional[List[str]] = dataclasses.field(
      default_factory=lambda: list(LARS_SKIP_PATTERNS))
  exclude_from_layer_adaptation: Optional[List[str]] = dataclasses.field(
      default_factory=lambda: list(LARS_SKIP_PATTERNS))


@dataclasses.dataclass
class SM3Config(optimizer_config.BaseOptimizerConfig):
  """SM3-II (Anil et al. 2019) as `official_ext.modeling.optimization.sm3`.

  Per-axis accumulators (k + n floats for a k x n kernel), nu = min of the
  covering accumulators + g^2, update lr * g / sqrt(nu) through an exponential
  momentum (0: no momentum slot). `weight_decay` (not in the paper, default 0)
  is added to the update of variables outside `skip_list`.
  """
  name: str = 'SM3'
  momentum: float = 0.9
  weight_decay: float = 0.0
  epsilon: float = 1e-30
  skip_list: List[str] = dataclasses.field(
      default_factory=lambda: list(LARS_SKIP_LIST))


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
  """Model Garden's optimizers plus the reference code's LARS and RMSProp.

  `lamb` is Model Garden's, with the `paper_lars` skip list; `sm3` is new.
  """
  lamb: LAMBConfig = dataclasses.field(default_factory=LAMBConfig)
  sm3: SM3Config = dataclasses.field(default_factory=SM3Config)
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
