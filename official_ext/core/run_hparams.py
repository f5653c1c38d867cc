"""A run's hyperparameters, as Table 2 lists them, for TensorBoard's HParams.

`run_hparams(params, num_replicas)` flattens an experiment into the columns
that tell runs apart (model, replicas, global batch, optimizer, LR per 256,
decay, warmup epochs, BN group size, precision, ...). `write_hparams` writes
them to `model_dir` with the metrics they are judged by (peak top-1 and time
to peak, written by the TimedTrainer as validation scalars), so
`tensorboard --logdir PARENT` lines runs up in the HParams dashboard.
"""
from typing import Dict, Union

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

HParamValue = Union[str, int, float, bool]

# (tag, group, display name) of the metrics the HParams dashboard shows.
METRICS = (
    ('peak_top1', 'validation', 'peak top-1'),
    ('time_to_peak_s', 'validation', 'time to peak (s)'),
    ('top_1_accuracy', 'validation', 'top-1'),
    ('images_per_ms', 'train', 'images/ms'),
)

_DECAY_NAMES = {
    'scaled_polynomial': 'polynomial',
    'scaled_exponential': 'exponential',
}


def _schedule_hparams(params) -> Dict[str, HParamValue]:
  """LR per 256 images, decay name and warmup epochs of any schedule."""
  optimization = params.trainer.optimizer_config
  schedule_type = optimization.learning_rate.type or 'constant'
  schedule = optimization.learning_rate.get()
  batch = params.task.train_data.global_batch_size
  steps_per_epoch = params.task.train_data.num_examples / batch
  if hasattr(schedule, 'lr_per_256'):
    lr_per_256 = schedule.lr_per_256
    warmup_epochs = schedule.warmup_epochs
  else:  # A Model Garden schedule: its peak LR is given for this batch.
    peak = getattr(schedule, 'initial_learning_rate',
                   getattr(schedule, 'learning_rate', 0.0)) or 0.0
    lr_per_256 = peak * 256 / batch
    warmup = optimization.warmup.get()
    warmup_steps = getattr(warmup, 'warmup_steps', 0) or 0
    warmup_epochs = warmup_steps / steps_per_epoch if steps_per_epoch else 0.0
  return {
      'lr_per_256': float(lr_per_256),
      'decay': _DECAY_NAMES.get(schedule_type, schedule_type),
      'warmup_epochs': float(warmup_epochs),
  }


def model_name(params) -> str:
  backbone = params.task.model.backbone
  model_id = getattr(backbone.get(), 'model_id', '')
  if backbone.type in ('paper_efficientnet', 'efficientnet'):
    return f'efficientnet-{model_id}'
  return f'{backbone.type}-{model_id}' if model_id else str(backbone.type)


def run_hparams(params, experiment: str,
                num_replicas: int) -> Dict[str, HParamValue]:
  """The hyperparameters that tell this run apart from others."""
  norm = params.task.model.norm_activation
  values = {
      'experiment': experiment,
      'model': model_name(params),
      'image_size': int(params.task.model.input_size[0]),
      'global_batch_size': int(params.task.train_data.global_batch_size),
      'replicas': int(num_replicas),
      'optimizer': str(params.trainer.optimizer_config.optimizer.type),
      'bn_group_size': int(getattr(norm, 'bn_group_size', 1) or 1),
      'precision': str(params.runtime.mixed_precision_dtype or 'float32'),
      'train_epochs': float(getattr(params.trainer, 'train_epochs', 0.0)),
  }
  values.update(_schedule_hparams(params))
  return values


def write_hparams(model_dir: str, values: Dict[str, HParamValue]) -> None:
  """Writes the HParams experiment config and this run's values."""
  writer = tf.summary.create_file_writer(model_dir)
  with writer.as_default():
    hp.hparams_config(
        hparams=[hp.HParam(name) for name in values],
        metrics=[hp.Metric(tag, group=group, display_name=name)
                 for tag, group, name in METRICS])
    hp.hparams(values, trial_id=model_dir)
  writer.close()
