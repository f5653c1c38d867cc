"""ExperimentRunner: a non-chief worker restores the chief's state, writes to scratch.

In-process, on one replica: the runner is handed a scratch directory as a
non-chief worker of a multi-worker job would be (tests/test_multi_worker.py
runs real workers). Model Garden's runner would start such a worker from
step 0 with fresh weights and save its EMA checkpoints into model_dir.
"""

import numpy as np
import tensorflow as tf

from official.core import task_factory
from official.core import train_utils

from official_ext.core import experiment_runner
from official_ext.tools import make_fixture
from tests import short_runs
from tests.conftest import cpu_strategy, file_snapshot

CHIEF_STEPS = 2


def _runner(params, mode, model_dir, scratch_dir=None):
  strategy = cpu_strategy(1)
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
    trainer = train_utils.create_trainer(
        params, task, train='train' in mode, evaluate='eval' in mode)
  return experiment_runner.ExperimentRunner(
      distribution_strategy=strategy, task=task, mode=mode, params=params,
      model_dir=model_dir, trainer=trainer, save_summary=scratch_dir is None,
      worker_scratch_dir=scratch_dir)


def _first_kernel(runner):
  return next(v for v in runner.trainer.model.trainable_variables
              if 'kernel' in v.name)


def test_non_chief_worker_resumes_from_model_dir_and_writes_only_scratch(
    tmp_path):
  fixture = make_fixture.make_fixture(
      str(tmp_path / 'fixture'), num_classes=short_runs.NUM_CLASSES,
      num_train=short_runs.NUM_TRAIN, num_eval=short_runs.NUM_EVAL,
      image_size=20)
  params = short_runs.resolved_params(fixture)
  assert params.task.model.num_classes == short_runs.NUM_CLASSES
  assert params.trainer.optimizer_config.ema.average_decay > 0
  model_dir = str(tmp_path / 'run')

  # The chief trains part of the run and checkpoints it in model_dir.
  chief = _runner(params.replace(trainer={'train_steps': CHIEF_STEPS}),
                  'train', model_dir)
  chief.run()
  chief_kernel = _first_kernel(chief).numpy()
  assert tf.train.latest_checkpoint(model_dir).endswith(f'ckpt-{CHIEF_STEPS}')
  before = file_snapshot(model_dir)

  # A worker joining the resumed run starts from the chief's state...
  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  worker = _runner(params, 'train_and_eval', model_dir, str(scratch))
  assert int(worker.trainer.global_step.numpy()) == CHIEF_STEPS
  np.testing.assert_array_equal(_first_kernel(worker).numpy(), chief_kernel)
  # Like the chief's manager after its restore, the worker's counts the save
  # interval from the restored step: no save is due there.
  assert experiment_runner.saved_step(
      tf.train.latest_checkpoint(model_dir)) == CHIEF_STEPS
  assert worker.checkpoint_manager.save() is None

  # ...and its checkpoints, EMA ones included, go to scratch only.
  worker.run()
  assert int(worker.trainer.global_step.numpy()) == params.trainer.train_steps
  assert file_snapshot(model_dir) == before
  assert tf.train.latest_checkpoint(str(scratch / 'checkpoints')).endswith(
      f'ckpt-{params.trainer.train_steps}')
  assert tf.train.latest_checkpoint(str(scratch / 'ema_checkpoints'))

  # An eval-only worker evaluates the chief's checkpoint, not scratch's.
  evaluator = _runner(params, 'eval', model_dir, str(scratch))
  assert int(evaluator.trainer.global_step.numpy()) == CHIEF_STEPS
  np.testing.assert_array_equal(_first_kernel(evaluator).numpy(),
                                chief_kernel)
  evaluator.run()
  assert file_snapshot(model_dir) == before
