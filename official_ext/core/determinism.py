"""Deterministic runs: an interrupted run resumes to the uninterrupted result.

`runtime.deterministic=True` (with `runtime.seed`) makes a CPU run a function
of its config: op determinism (`tf.config.experimental.enable_op_determinism`)
and fixed seeds give the same initial weights and the same arithmetic; the
training stream is seeded (file and record shuffles) and its crops and flips
are stateless functions of (seed, position in the stream). A checkpoint holds
weights, optimizer slots, EMA and step; on resume the stream restarts at the
checkpoint's step (its records are re-read, not decoded). So a run killed at
any moment and rerun ends with the metrics of a run never killed.

What cannot be resumed exactly is refused at config time: random ops whose
state lives in the op kernel and in no checkpoint -- Model Garden's head
dropout, stochastic depth, AutoAugment/RandAugment -- and
on_bad_record='skip' (a skipped record moves every later step's examples).
"""
from typing import List

import tensorflow as tf
import tf_keras


def incompatible_settings(params) -> List[str]:
  """The settings of `params` a deterministic run cannot reproduce."""
  found = []
  model = params.task.model
  if model.dropout_rate:
    found.append(f'task.model.dropout_rate={model.dropout_rate}')
  backbone = model.backbone.get()
  drop = getattr(backbone, 'stochastic_depth_drop_rate', None)
  if drop:
    found.append(f'task.model.backbone.{model.backbone.type}.'
                 f'stochastic_depth_drop_rate={drop}')
  train = params.task.train_data
  aug_type = train.aug_type.type if train.aug_type else None
  if aug_type:
    found.append(f'task.train_data.aug_type.type={aug_type!r}')
  if getattr(train, 'on_bad_record', 'fail') != 'fail':
    found.append(f'task.train_data.on_bad_record={train.on_bad_record!r}')
  return found


def resolve(params) -> None:
  """Checks a deterministic config and seeds its training data (in place)."""
  runtime = params.runtime
  if not runtime.deterministic:
    return
  found = incompatible_settings(params)
  if found:
    raise ValueError(
        'runtime.deterministic=True cannot reproduce ' + ', '.join(found) +
        ' (their random state is in no checkpoint); set them to 0 / none / '
        "'fail', or runtime.deterministic=False")
  train = params.task.train_data
  train.deterministic = True
  if train.seed is None:
    train.seed = runtime.seed


def enable(params) -> None:
  """Op determinism and process-wide seeds, before any model is built."""
  if params.runtime.deterministic:
    tf.config.experimental.enable_op_determinism()
    tf_keras.utils.set_random_seed(params.runtime.seed)


def checkpoint_step(model_dir: str) -> int:
  """Global step of the latest checkpoint in model_dir (0: none)."""
  latest = tf.train.latest_checkpoint(model_dir) if model_dir else None
  if not latest:
    return 0
  return int(tf.train.load_variable(
      latest, 'global_step/.ATTRIBUTES/VARIABLE_VALUE'))
