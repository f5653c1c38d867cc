"""Derives step counts and schedule inputs from the epoch-based recipe.

The paper states its recipe in epochs, examples and LR per 256 examples; Orbit
and the schedules count steps. `resolve` fills every derived field from the
recipe, so overriding the global batch (by gin, a config file or
--params_override) rescales the learning rate and recomputes every step count.
Derived fields are owned by this module: setting one by hand is an error
(see `DERIVED_FIELDS`), since it would silently disagree with the recipe.
"""
import math
from typing import Dict

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

  precision = params.runtime.mixed_precision_dtype or 'float32'
  if precision not in exp_cfg.PRECISIONS:
    raise ValueError(
        f'runtime.mixed_precision_dtype={precision!r}; use one of '
        f'{", ".join(exp_cfg.PRECISIONS)}')
  backbone = params.task.model.backbone
  if backbone.type == 'paper_efficientnet':
    backbone.paper_efficientnet.conv_dtype = (
        'bfloat16' if precision == 'conv_bfloat16' else '')

  per_epoch = steps_per_epoch(params)
  train_steps = max(1, int(trainer.train_epochs * per_epoch))
  interval = min(train_steps,
                 max(1, int(round(trainer.eval_every_epochs * per_epoch))))
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
