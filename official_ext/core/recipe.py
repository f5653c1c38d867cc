"""Derives step counts and schedule inputs from the epoch-based recipe.

The paper states its recipe in epochs, examples and LR per 256 examples; Orbit
and the schedules count steps. `resolve` fills every derived field from the
recipe, so overriding the global batch (by gin, a config file or
--params_override) rescales the learning rate and recomputes every step count.
Derived fields are owned by this module: setting one by hand is an error
(see `DERIVED_FIELDS`), since it would silently disagree with the recipe.
"""
import math
from typing import Dict, Optional

from official_ext.modeling.layers import group_assignment
from official_ext.modeling.optimization import configs as opt_configs
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


def get_field(params, dotted: str):
  node = params
  for name in dotted.split('.'):
    node = getattr(node, name)
  return node


def derived_values(params) -> Dict[str, object]:
  return {name: get_field(params, name) for name in DERIVED_FIELDS}


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


def _resolve_bn_groups(params) -> None:
  """bn_batch_size -> bn_group_size; validates the groups when possible."""
  norm, rt = params.task.model.norm_activation, params.runtime
  norm.device_mesh = list(rt.device_mesh)
  norm.cores_per_chip = rt.cores_per_chip
  replicas = expected_replicas(params)
  if norm.bn_batch_size > 0:
    if replicas is None:
      raise ValueError(
          f'task.model.norm_activation.bn_batch_size={norm.bn_batch_size} '
          'needs a known replica count (runtime.num_cpu_replicas, tpu_cores '
          'with the tpu strategy, or num_gpus); or set bn_group_size')
    per_replica, remainder = divmod(params.task.train_data.global_batch_size,
                                    replicas)
    if remainder:
      raise ValueError(
          f'task.train_data.global_batch_size='
          f'{params.task.train_data.global_batch_size} does not split over '
          f'{replicas} replicas')
    try:
      norm.bn_group_size = group_assignment.group_size_from_bn_batch(
          norm.bn_batch_size, per_replica)
    except ValueError as e:
      raise ValueError(f'task.model.norm_activation.bn_batch_size: {e}') from e
  if norm.bn_group_size < 1:
    raise ValueError(
        f'task.model.norm_activation.bn_group_size={norm.bn_group_size} must '
        'be >= 1')
  if replicas is not None and (norm.bn_group_size > 1 or rt.device_mesh):
    try:
      group_assignment.group_assignment(
          replicas, norm.bn_group_size,
          mesh_shape=tuple(rt.device_mesh) or None,
          cores_per_chip=rt.cores_per_chip)
    except ValueError as e:
      raise ValueError(
          f'task.model.norm_activation.bn_group_size={norm.bn_group_size} '
          f'with runtime.device_mesh={list(rt.device_mesh)}: {e}') from e


def resolve(params):
  """Fills the derived fields of `params` (unlocked) in place and returns it."""
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

  _resolve_bn_groups(params)

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
  return params
