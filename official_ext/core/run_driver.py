"""Runs one experiment: strategy, model_dir bookkeeping, Orbit train/eval loop.

The loop itself is Model Garden's experiment runner (an Orbit controller
interleaving training and evaluation on every replica; see
official_ext.core.experiment_runner for the multi-worker fixes); this module
picks the tf.distribute strategy, protects an existing model_dir
(official_ext.core.resume_guard), writes params.yaml atomically and the
operative gin config, and adds progress actions.
"""
import functools
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf

from official.common import distribute_utils
from official.core import task_factory
from official.core import train_utils
from official.modeling import performance

from official_ext.core import config_overrides
from official_ext.core import determinism
from official_ext.core import divergence
from official_ext.core import experiment_list
from official_ext.core import experiment_runner
from official_ext.core import progress
from official_ext.core import recipe
from official_ext.core import resume_guard
from official_ext.core import run_hparams
from official_ext.core import runtime
from official_ext.core import time_to_accuracy as tta
from official_ext.core import timed_trainer
from official_ext.core import tpu_slice
from official_ext.dataloaders import classification_input
from official_ext import tasks  # pylint: disable=unused-import (registers)

def check_model_dir(model_dir: str, params, mode: str,
                    force_params: bool = False) -> List[Tuple[str, Any, Any]]:
  """Vets model_dir before anything is written; returns the params changes.

  Training: summary.json must be readable, the params may differ from the
  run already there only in runtime-only fields (official_ext.core
  .resume_guard; any field with `force_params`), and model_dir must be
  writable. Evaluation: model_dir must hold a checkpoint (`eval`).
  """
  if mode == 'eval' and not tf.train.latest_checkpoint(model_dir):
    raise config_overrides.ConfigError(
        f'--mode=eval: model_dir {model_dir!r} holds no checkpoint to '
        'evaluate; pass the --model_dir of a trained run')
  if 'train' not in mode:
    return []
  try:
    tta.read_summary(model_dir)
  except ValueError as e:
    raise config_overrides.ConfigError(
        f'{e}; move it away or use a new --model_dir') from e
  try:
    changes = resume_guard.check_resume(model_dir, params, force_params)
  except resume_guard.ResumeRefused as e:
    raise config_overrides.ConfigError(str(e)) from e
  _check_writable(model_dir)
  return changes


def _check_writable(model_dir: str) -> None:
  """A local model_dir (or its first existing parent) must be writable."""
  if '://' in model_dir:
    return  # Object stores: permissions show at the first write.
  path = os.path.abspath(model_dir)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  if os.path.exists(path) and not os.path.isdir(path):
    raise config_overrides.ConfigError(
        f'--model_dir={model_dir!r}: {path} is a file, not a directory')
  if not os.access(path, os.W_OK | os.X_OK):
    raise config_overrides.ConfigError(
        f'--model_dir={model_dir!r} is not writable ({path} does not allow '
        'writing); pass a --model_dir you can write to')


def check_inputs(params, mode: str) -> None:
  """Fails before any model is built if a dataset the mode reads is unusable.

  Per split the mode reads (embedded datasets are materialized later): the
  input files exist, or the TFDS dataset is known and prepared in its
  tfds_data_dir with the split and features; and the labels of a sample of
  records, minus label_offset, lie in [0, task.model.num_classes). Raises
  config_overrides.ConfigError with a one-line message.
  """
  needed = []
  if 'train' in mode:
    needed.append(('task.train_data', params.task.train_data))
  if 'eval' in mode:
    needed.append(('task.validation_data', params.task.validation_data))
  num_classes = params.task.model.num_classes
  for name, data in needed:
    if data.embedded_dataset:
      continue
    if not data.tfds_name:
      try:
        classification_input.list_files(data.input_path)
      except ValueError as e:
        raise config_overrides.ConfigError(
            f'{name}.input_path: {e} (set it with --params_override or gin, '
            f'e.g. {name}.input_path=/data/imagenet/train-*, or use '
            f'{name}.tfds_name)') from e
    try:
      classification_input.check_source(data, num_classes=num_classes)
    except ValueError as e:
      raise config_overrides.ConfigError(f'{name}: {e}') from e


def build_strategy(params) -> Tuple[tf.distribute.Strategy, Any]:
  """The run's strategy, and `params` resolved for its live replica count.

  N logical CPU replicas (`runtime.num_cpu_replicas`), a TPU slice (checked
  against `runtime.tpu_cores`, with an explicit device assignment for the BN
  groups), or Model Garden's strategy for `runtime.distribution_strategy`.
  Raises ConfigError (or tpu_slice.TpuUnavailableError) before anything is
  built when the params do not fit the replicas.
  """
  rt = params.runtime
  if rt.num_cpu_replicas > 0:
    runtime.configure_logical_cpus(rt.num_cpu_replicas)
    strategy = runtime.mirrored_cpu_strategy(rt.num_cpu_replicas)
  elif rt.distribution_strategy == 'tpu':
    resolver, topology = tpu_slice.connect(
        rt.tpu, connect_timeout_s=rt.tpu_connect_timeout_s)
    cores = tpu_slice.num_cores(topology)
    # Before the strategy: the slice must be the one the params are for.
    params = config_overrides.resolve_for_replicas(params, cores, tpu=True)
    strategy = tpu_slice.build_strategy(resolver, topology)
  else:
    strategy = distribute_utils.get_distribution_strategy(
        distribution_strategy=rt.distribution_strategy,
        all_reduce_alg=rt.all_reduce_alg,
        num_gpus=rt.num_gpus,
        tpu_address=rt.tpu)
  return strategy, config_overrides.resolve_for_replicas(
      params, strategy.num_replicas_in_sync)


def _time_to_accuracy(params, experiment: str, num_replicas: int,
                      model_dir: str, writes: bool) -> tta.TimeToAccuracy:
  """The run record of model_dir: resumed if it exists, else a new one.

  Only a writing process (the chief) rewrites summary.json."""
  record = tta.read_summary(model_dir)  # check_model_dir vetted it.
  hparams = run_hparams.run_hparams(params, experiment, num_replicas)
  if record is None:
    record = tta.RunRecord(experiment, hparams, params.trainer.train_steps,
                           recipe.steps_per_epoch(params))
  record.paper_top1 = experiment_list.paper_top1(experiment)
  return tta.TimeToAccuracy(record, model_dir if writes else None)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's files (one process per job).

  Under MultiWorkerMirroredStrategy every worker runs this driver on the same
  model_dir; only the chief writes params.yaml, summary.json, HParams and
  the gin config (Orbit and the checkpoint manager handle their own files).
  """
  return bool(strategy.extended.should_checkpoint)


def _copy_best_checkpoint_record(params, model_dir: str, scratch_dir: str):
  """Starts a worker's scratch best-checkpoint record from the chief's.

  Every worker must decide alike whether an eval is the best so far: a save
  is a collective (its first one creates the save counter), so a worker that
  saves alone hangs the others. The record (info.json) is all they compare.
  """
  subdir = params.trainer.best_checkpoint_export_subdir
  if not subdir:
    return
  source = os.path.join(model_dir, subdir, 'info.json')
  if tf.io.gfile.exists(source):
    tf.io.gfile.makedirs(os.path.join(scratch_dir, subdir))
    tf.io.gfile.copy(source, os.path.join(scratch_dir, subdir, 'info.json'))


def run(params, mode: str, model_dir: str, experiment: str = '',
        force_params: bool = False) -> Dict:
  """Trains and/or evaluates `params` in `model_dir`.

  Returns the outputs of the last evaluation ({} if there was none).

  Training modes also keep the time-to-accuracy record (summary.json) and
  write TensorBoard HParams data; an eval-only mode leaves both untouched.
  Raises ConfigError before writing anything when the params do not fit the
  replicas or the model_dir.
  """
  strategy, params = build_strategy(params)
  changes = check_model_dir(model_dir, params, mode, force_params)
  chief = is_chief(strategy)
  clock: Optional[tta.TimeToAccuracy] = None
  if 'train' in mode:
    clock = _time_to_accuracy(params, experiment, strategy.num_replicas_in_sync,
                              model_dir, writes=chief)
    if chief:
      resume_guard.write_params(params, model_dir, changes)
      run_hparams.write_hparams(model_dir, clock.record.hparams)
  precision = params.runtime.mixed_precision_dtype
  # conv_bfloat16 keeps the global policy float32: the backbone gives its
  # convolutions a mixed_bfloat16 policy (recipe.resolve sets conv_dtype).
  if precision in ('bfloat16', 'float16'):
    performance.set_mixed_precision_policy(precision)

  # A non-chief worker writes only to its own scratch directory.
  scratch_dir = None if chief else tempfile.mkdtemp(prefix='official_ext_')
  try:
    if scratch_dir:
      _copy_best_checkpoint_record(params, model_dir, scratch_dir)
    determinism.enable(params)
    with strategy.scope():
      task = task_factory.get_task(params.task, logging_dir=model_dir)
      if params.runtime.deterministic and 'train' in mode:
        task.resume_step = determinism.checkpoint_step(model_dir)
      trainer = train_utils.create_trainer(
          params, task, train='train' in mode,
          evaluate='eval' in mode,
          checkpoint_exporter=train_utils.maybe_create_best_ckpt_exporter(
              params, scratch_dir or model_dir),
          trainer_cls=functools.partial(timed_trainer.TimedTrainer,
                                        time_to_accuracy=clock))

    reporter = progress.ProgressReporter(
        trainer.global_step, params.trainer.train_steps,
        params.task.train_data.global_batch_size,
        recipe.steps_per_epoch(params))
    print(f'{mode}: {strategy.num_replicas_in_sync} replicas '
          f'({type(strategy).__name__}), {params.trainer.train_steps} steps, '
          f'model_dir {model_dir} (tensorboard --logdir {model_dir})',
          flush=True)
    runner = experiment_runner.ExperimentRunner(
        distribution_strategy=strategy, task=task, mode=mode, params=params,
        model_dir=model_dir, trainer=trainer, save_summary=chief,
        train_actions=[reporter.train_action],
        eval_actions=[reporter.eval_action],
        worker_scratch_dir=scratch_dir)
    try:
      _, eval_logs = runner.run()
    except divergence.TrainingDiverged:
      if clock is not None:
        clock.record.status = 'diverged'
        clock.write()
      raise
  finally:
    if scratch_dir:
      shutil.rmtree(scratch_dir, ignore_errors=True)
  if clock is not None:
    clock.finish(
        completed=int(trainer.global_step.numpy()) >= params.trainer.train_steps)
    reporter.report_time_to_accuracy(clock.record)
  if chief:
    train_utils.save_gin_config(mode, model_dir)
  # Model Garden's runner returns eval logs only with run_post_eval.
  return eval_logs or reporter.last_eval
