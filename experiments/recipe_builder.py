"""Turns one declarative recipe (a row of data) into a Model Garden config.

Every registered experiment of this project is a `Recipe` value; this module is
the single place that maps recipe fields onto ExperimentConfig fields.
"""
import dataclasses
from typing import Optional, Tuple

from official.core import config_definitions as cfg
from official.modeling.optimization.configs import optimizer_config
from official.vision.configs import common

from official_ext.core import recipe as recipe_lib
from official_ext.modeling.optimization import configs as opt_configs
from official_ext.vision.configs import backbones
from official_ext.vision.configs import efficientnet
from official_ext.vision.configs import image_classification as exp_cfg


# The reference code's two, and the two large-batch optimizers beyond it.
OPTIMIZERS = ('lars', 'rmsprop', 'lamb', 'sm3')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything that distinguishes one experiment from another."""
  model_id: str                      # 'b0' .. 'b7'
  global_batch_size: int
  optimizer: str                     # one of OPTIMIZERS
  lr_per_256: float
  warmup_epochs: float
  train_epochs: float = 350.0
  eval_every_epochs: float = 4.0
  num_classes: int = exp_cfg.IMAGENET_NUM_CLASSES
  train_examples: int = exp_cfg.IMAGENET_TRAIN_EXAMPLES
  eval_examples: int = exp_cfg.IMAGENET_EVAL_EXAMPLES
  eval_batch_size: Optional[int] = None   # default: the train batch
  image_size: Optional[int] = None        # default: the model's
  dropout_rate: Optional[float] = None    # default: the model's
  stochastic_depth_drop_rate: float = efficientnet.STOCHASTIC_DEPTH_DROP_RATE
  end_learning_rate: float = 0.1          # polynomial decay (LARS)
  ema_decay: Optional[float] = 0.9999
  label_smoothing: float = 0.1
  weight_decay: float = 1e-5
  # Replicas sharing BN statistics: a rule of
  # official_ext.modeling.layers.bn_group_rules, resolved for the replicas.
  bn_group_rule: str = 'fixed'
  bn_group_size: int = 1
  bn_batch_size: int = 0
  bn_momentum: float = 0.99
  # The TPU slice of the row, if any: the experiment then runs under
  # TPUStrategy on a slice of exactly this many cores.
  tpu_cores: int = 0
  num_cpu_replicas: int = 0
  # The paper: bfloat16 convolutions, float32 elsewhere (TPU); CPU runs use
  # float32 (bfloat16 is slower on CPU).
  precision: str = 'conv_bfloat16'
  steps_per_loop: int = 1000
  # A run that is a function of its seed (weights, data order, augmentation).
  deterministic: bool = False
  seed: int = 0
  train_input_path: str = ''
  eval_input_path: str = ''
  embedded_dataset: str = ''
  aug_rand_hflip: bool = True
  crop_area_range: Tuple[float, float] = (0.08, 1.0)
  eval_crop_padding: int = 32
  # Subtracted from stored labels; None: ImageNet's convention of the source
  # (1 for TFRecords, 0 for TFDS imagenet2012).
  label_offset: Optional[int] = 0
  # RandAugment of the reference code (2 layers, cutout 40, translate 100)
  # at this magnitude; None: no RandAugment.
  randaug_magnitude: Optional[float] = None
  # AutoAugment policy of the reference code ('v0', cutout 100, translate
  # 250: Model Garden's defaults); None: no AutoAugment.
  autoaugment_policy: Optional[str] = None

  @property
  def schedule(self) -> str:
    # The paper pairs RMSProp with exponential decay and LARS with polynomial
    # decay; LAMB and SM3 are large-batch optimizers, so they get LARS's.
    return 'exponential' if self.optimizer == 'rmsprop' else 'polynomial'


def _optimizer(r: Recipe) -> opt_configs.OptimizerConfig:
  if r.optimizer == 'lars':
    return opt_configs.OptimizerConfig(
        type='paper_lars', paper_lars=opt_configs.PaperLARSConfig())
  if r.optimizer == 'rmsprop':
    # TF1's RMSPropOptimizer(decay=0.9, momentum=0.9, epsilon=0.001).
    return opt_configs.OptimizerConfig(
        type='paper_rmsprop',
        paper_rmsprop=opt_configs.PaperRMSPropConfig(
            rho=0.9, momentum=0.9, epsilon=0.001))
  if r.optimizer == 'lamb':
    # Model Garden's LAMB with the LARS skip list and LARS's weight decay.
    return opt_configs.OptimizerConfig(
        type='lamb',
        lamb=opt_configs.LAMBConfig(weight_decay_rate=r.weight_decay))
  if r.optimizer == 'sm3':
    return opt_configs.OptimizerConfig(type='sm3', sm3=opt_configs.SM3Config())
  raise ValueError(f'unknown optimizer {r.optimizer!r}; use one of '
                   f'{", ".join(OPTIMIZERS)}')


def _learning_rate(r: Recipe) -> opt_configs.LrConfig:
  if r.schedule == 'polynomial':
    return opt_configs.LrConfig(
        type='scaled_polynomial',
        scaled_polynomial=opt_configs.ScaledPolynomialConfig(
            lr_per_256=r.lr_per_256, warmup_epochs=r.warmup_epochs,
            power=2.0, end_learning_rate=r.end_learning_rate))
  return opt_configs.LrConfig(
      type='scaled_exponential',
      scaled_exponential=opt_configs.ScaledExponentialConfig(
          lr_per_256=r.lr_per_256, warmup_epochs=r.warmup_epochs,
          decay_rate=0.97, decay_epochs=2.4, staircase=True))


def _optimization(r: Recipe) -> opt_configs.OptimizationConfig:
  optimizer = _optimizer(r)
  learning_rate = _learning_rate(r)
  ema = None
  if r.ema_decay:
    # The reference averages trainable variables and BN moving statistics.
    ema = optimizer_config.EMAConfig(
        average_decay=r.ema_decay, trainable_weights_only=False,
        dynamic_decay=True)
  return opt_configs.OptimizationConfig(
      optimizer=optimizer, learning_rate=learning_rate, ema=ema)


def _augmentation(r: Recipe) -> common.Augmentation:
  """The training augmentation; type None when the recipe has none.

  Always a config (never None), so every experiment's train_data has the same
  fields for gin and overrides (`task.train_data.aug_type.type = 'randaug'`).
  """
  if r.autoaugment_policy is not None:
    if r.randaug_magnitude is not None:
      raise ValueError('a recipe takes AutoAugment or RandAugment, not both')
    return common.Augmentation(
        type='autoaug',
        autoaug=common.AutoAugment(augmentation_name=r.autoaugment_policy,
                                   cutout_const=100, translate_const=250))
  if r.randaug_magnitude is None:
    return common.Augmentation()
  return common.Augmentation(
      type='randaug',
      randaug=common.RandAugment(num_layers=2, magnitude=r.randaug_magnitude,
                                 cutout_const=40, translate_const=100))


def build_experiment(r: Recipe) -> exp_cfg.ExperimentConfig:
  """The resolved ExperimentConfig of recipe `r`."""
  variant = efficientnet.EFFICIENTNET_VARIANTS[r.model_id]
  image_size = r.image_size or variant.image_size
  dropout = variant.dropout_rate if r.dropout_rate is None else r.dropout_rate

  def data(is_training: bool) -> exp_cfg.DataConfig:
    return exp_cfg.DataConfig(
        input_path=r.train_input_path if is_training else r.eval_input_path,
        embedded_dataset=r.embedded_dataset,
        is_training=is_training,
        global_batch_size=(r.global_batch_size if is_training else
                           r.eval_batch_size or r.global_batch_size),
        num_examples=r.train_examples if is_training else r.eval_examples,
        aug_rand_hflip=r.aug_rand_hflip,
        aug_type=_augmentation(r) if is_training else None,
        crop_area_range=r.crop_area_range,
        eval_crop_padding=r.eval_crop_padding,
        label_offset=r.label_offset,
        drop_remainder=is_training)

  config = exp_cfg.ExperimentConfig(
      task=exp_cfg.ImageClassificationTask(
          model=exp_cfg.ImageClassificationModel(
              num_classes=r.num_classes,
              input_size=[image_size, image_size, 3],
              backbone=backbones.Backbone(
                  type='paper_efficientnet',
                  paper_efficientnet=backbones.PaperEfficientNet(
                      model_id=r.model_id, se_ratio=efficientnet.SE_RATIO,
                      stochastic_depth_drop_rate=(
                          r.stochastic_depth_drop_rate))),
              dropout_rate=dropout,
              norm_activation=exp_cfg.NormActivation(
                  bn_group_rule=r.bn_group_rule,
                  bn_group_size=r.bn_group_size,
                  bn_batch_size=r.bn_batch_size,
                  norm_momentum=r.bn_momentum)),
          train_data=data(True),
          validation_data=data(False),
          losses=exp_cfg.Losses(label_smoothing=r.label_smoothing,
                                weight_decay=r.weight_decay)),
      trainer=exp_cfg.TrainerConfig(
          optimizer_config=_optimization(r),
          train_epochs=r.train_epochs,
          eval_every_epochs=r.eval_every_epochs,
          steps_per_loop=r.steps_per_loop,
          summary_interval=r.steps_per_loop),
      runtime=exp_cfg.RuntimeConfig(
          distribution_strategy='tpu' if r.tpu_cores else 'mirrored',
          num_cpu_replicas=r.num_cpu_replicas, tpu_cores=r.tpu_cores,
          mixed_precision_dtype=r.precision,
          deterministic=r.deterministic, seed=r.seed),
      restrictions=['task.train_data.is_training != None',
                    'task.validation_data.is_training != None'])
  return recipe_lib.resolve(config)
