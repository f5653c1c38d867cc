"""Derives step counts and schedule inputs from the epoch-based recipe.

The paper states its recipe in epochs, examples and LR per 256 examples; Orbit
and the schedules count steps. `resolve` fills every derived field from the
recipe, so overriding the global batch (by gin, a config file or
--params_override) rescales the learning rate and recomputes every step count.
Derived fields are owned by this module: setting one by hand is an error
(see `DERIVED_FIELDS`), since it would silently disagree with the recipe.
"""
import math
from typing import Dict, Optional, Tuple

from official_ext.core import determinism
from official_ext.modeling.layers import bn_group_rules
from official_ext.modeling.layers import group_assignment
from official_ext.modeling.optimization import configs as opt_configs
from official_ext.vision.configs import backbones as backbones_cfg
from official_ext.vision.configs import image_classification as exp_cfg

# Derived field -> the recipe field(s) to override instead.
DERIVED_FIELDS: Dict[str, str] = {
    'trainer.train_steps': 'trainer.train_epochs',
    'trainer.validation_interval': 'trainer.eval_every_epochs',
    'trainer.validation_steps':
        'task.validation_data.num_examples / global_batch_size',
    'trainer.checkpoint_interval': 'trainer.eval_every_epochs',
    'task.model.backbone.paper_efficientnet.conv_dtype':
        "runtime.mixed_precision_dtype ('conv_bfloat16')",
    'task.model.norm_activation.device_mesh': 'runtime.device_mesh',
    'task.model.norm_activation.cores_per_chip': 'runtime.cores_per_chip',
}
for _schedule in opt_configs.SCALED_SCHEDULES:
  for _field in ('global_batch_size', 'steps_per_epoch', 'train_steps'):
    DERIVED_FIELDS[
        f'trainer.optimizer_config.learning_rate.{_schedule}.{_field}'] = (
            'task.train_data.global_batch_size / num_examples, '
            'trainer.train_epochs')


BN_GROUP_SIZE = 'task.model.norm_activation.bn_group_size'
BN_GROUP_SIZE_SOURCE = (
    'task.model.norm_activation.bn_group_rule / bn_batch_size (set '
    "bn_group_rule='fixed' and bn_batch_size=0 to choose bn_group_size)")


def get_field(params, dotted: str):
  node = params
  for name in dotted.split('.'):
    node = getattr(node, name)
  return node


def derived_values(params) -> Dict[str, object]:
  values = {name: get_field(params, name) for name in DERIVED_FIELDS}
  norm = params.task.model.norm_activation
  if bn_group_rules.is_derived(norm.bn_group_rule, norm.bn_batch_size):
    values[BN_GROUP_SIZE] = norm.bn_group_size
  return values


def derived_field_source(name: str) -> str:
  """The recipe field(s) to override instead of derived field `name`."""
  return BN_GROUP_SIZE_SOURCE if name == BN_GROUP_SIZE else DERIVED_FIELDS[name]


def steps_per_epoch(params) -> float:
  train = params.task.train_data
  return train.num_examples / train.global_batch_size


def _check_one_weight_decay(params) -> None:
  """The task's L2 term and Model Garden's kernel regularizer would add up."""
  losses = params.task.losses
  if losses.weight_decay and losses.l2_weight_decay:
    raise ValueError(
        f'task.losses.weight_decay={losses.weight_decay} and '
        f'task.losses.l2_weight_decay={losses.l2_weight_decay} are both set '
        'and would add up; set one (weight_decay is the reference code\'s L2 '
        'term over non-batch-norm variables)')


def expected_replicas(params) -> Optional[int]:
  """Replica count implied by the runtime config, when it implies one."""
  rt = params.runtime
  if rt.num_cpu_replicas > 0:
    return rt.num_cpu_replicas
  if rt.distribution_strategy == 'tpu' and rt.tpu_cores > 0:
    return rt.tpu_cores
  if rt.distribution_strategy == 'mirrored' and rt.num_gpus > 0:
    return rt.num_gpus
  return None


def chip_mesh(params, num_replicas: int) -> Optional[Tuple[int, int]]:
  """The 2-D chip mesh BN tiles are checked against at config time.

  runtime.device_mesh if set; under the TPU strategy, the standard TPU-v3
  slice of that many cores; else none (CPU and GPU hosts have no chip mesh).
  """
  rt = params.runtime
  if rt.device_mesh:
    return tuple(rt.device_mesh)
  if rt.distribution_strategy == 'tpu' and rt.num_cpu_replicas <= 0:
    return group_assignment.TPU_V3_CHIP_MESH.get(num_replicas)
  return None


def _resolve_bn_groups(params, num_replicas: Optional[int]) -> None:
  """bn_group_rule -> bn_group_size for the replicas; checks the groups."""
  norm, rt = params.task.model.norm_activation, params.runtime
  field = 'task.model.norm_activation'
  norm.device_mesh = list(rt.device_mesh)
  norm.cores_per_chip = rt.cores_per_chip
  try:
    bn_group_rules.check_rule(norm.bn_group_rule)
    group_assignment.check_layout(norm.bn_group_layout)
  except ValueError as e:
    raise ValueError(f'{field}.{e}') from None
  derived = bn_group_rules.is_derived(norm.bn_group_rule, norm.bn_batch_size)
  if derived:
    if num_replicas is None:
      norm.bn_group_size = 0  # Resolved by the run driver for the live count.
      return
    try:
      per_replica = bn_group_rules.per_replica(
          params.task.train_data.global_batch_size, num_replicas)
      norm.bn_group_size = bn_group_rules.group_size(
          norm.bn_group_rule, num_replicas, per_replica,
          bn_batch_size=norm.bn_batch_size)
    except ValueError as e:
      raise ValueError(
          f'{field}.bn_group_rule={norm.bn_group_rule!r} with bn_batch_size='
          f'{norm.bn_batch_size} on {num_replicas} replicas: {e}') from None
  elif norm.bn_group_size < 1:
    raise ValueError(
        f'{field}.bn_group_size={norm.bn_group_size} must be >= 1')
  if num_replicas is None or (norm.bn_group_size == 1 and not rt.device_mesh):
    return
  mesh = chip_mesh(params, num_replicas)
  if (mesh is None and rt.distribution_strategy == 'tpu'
      and rt.num_cpu_replicas <= 0):
    return  # A non-standard slice: its device assignment decides at run time.
  try:
    group_assignment.group_assignment(
        num_replicas, norm.bn_group_size, mesh_shape=mesh,
        cores_per_chip=rt.cores_per_chip, layout=norm.bn_group_layout)
  except ValueError as e:
    where = (f'runtime.device_mesh={list(rt.device_mesh)}' if rt.device_mesh
             else f'the {"x".join(map(str, mesh))} chip mesh of '
             f'{num_replicas} TPU-v3 cores' if mesh
             else f'{num_replicas} replicas')
    raise ValueError(
        f'{field}.bn_group_size={norm.bn_group_size} with bn_group_layout='
        f'{norm.bn_group_layout!r} on {where}: {e}') from None


def resolve(params, num_replicas: Optional[int] = None):
  """Fills the derived fields of `params` (unlocked) in place and returns it.

  `num_replicas`: the live replica count, once the strategy exists; default
  the count the runtime config implies (`expected_replicas`), if any.
  """
  train, evaluation = params.task.train_data, params.task.validation_data
  trainer = params.trainer
  for name, value in (('task.train_data.num_examples', train.num_examples),
                      ('task.train_data.global_batch_size',
                       train.global_batch_size),
                      ('task.validation_data.num_examples',
                       evaluation.num_examples),
                      ('task.validation_data.global_batch_size',
                       evaluation.global_batch_size)):
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f'{name}={value!r} must be a positive integer')
  for name, value in (('trainer.train_epochs', trainer.train_epochs),
                      ('trainer.eval_every_epochs', trainer.eval_every_epochs)):
    if value <= 0:
      raise ValueError(f'{name}={value!r} must be > 0')
  _check_one_weight_decay(params)

  precision = params.runtime.mixed_precision_dtype or 'float32'
  if precision not in exp_cfg.PRECISIONS:
    raise ValueError(
        f'runtime.mixed_precision_dtype={precision!r}; use one of '
        f'{", ".join(exp_cfg.PRECISIONS)}')
  backbone = params.task.model.backbone
  if backbone.type == 'paper_efficientnet':
    backbone.paper_efficientnet.conv_dtype = (
        'bfloat16' if precision == 'conv_bfloat16' else '')
    gradient = backbone.paper_efficientnet.depthwise_kernel_gradient
    choices = backbones_cfg.DEPTHWISE_KERNEL_GRADIENTS
    if gradient not in choices:
      raise ValueError(
          'task.model.backbone.paper_efficientnet.depthwise_kernel_gradient='
          f'{gradient!r}; use one of {", ".join(choices)}')

  replicas = num_replicas or expected_replicas(params)
  if replicas:
    for name, data in (('task.train_data', train),
                       ('task.validation_data', evaluation)):
      bn_group_rules.per_replica(data.global_batch_size, replicas,
                                 f'{name}.global_batch_size')
  _resolve_bn_groups(params, replicas)

  per_epoch = steps_per_epoch(params)
  train_steps = max(1, int(trainer.train_epochs * per_epoch))
  # Evaluations every ~eval_every_epochs, spaced evenly so that the last one
  # lands on the final step (Orbit always evaluates at the end; a fixed
  # rounded interval would add a near-duplicate eval a few steps before it).
  num_evals = max(1, round(trainer.train_epochs / trainer.eval_every_epochs))
  interval = max(1, math.ceil(train_steps / num_evals))
  trainer.train_steps = train_steps
  trainer.validation_interval = interval
  trainer.checkpoint_interval = interval
  trainer.validation_steps = math.ceil(
      evaluation.num_examples / evaluation.global_batch_size)
  # Orbit needs summary_interval to be a multiple of steps_per_loop.
  trainer.steps_per_loop = max(1, min(trainer.steps_per_loop, interval))
  trainer.summary_interval = trainer.steps_per_loop * max(
      1, round(trainer.summary_interval / trainer.steps_per_loop))

  lr = trainer.optimizer_config.learning_rate
  if lr.type in opt_configs.SCALED_SCHEDULES:
    schedule = lr.get()
    schedule.global_batch_size = train.global_batch_size
    schedule.steps_per_epoch = per_epoch
    schedule.train_steps = train_steps
  determinism.resolve(params)
  return params
