"""TimedTrainer: functions built before the clock, clock in the checkpoint."""
import functools
import json
import os
import time

import pytest
import tensorflow as tf

from official.core import task_factory
from official.core import train_lib
from official.core import train_utils

import experiments  # pylint: disable=unused-import (registers experiments)
from official_ext.core import recipe
from official_ext.core import time_to_accuracy as tta
from official_ext.core import timed_trainer
from official_ext.tools import make_fixture
from tests import short_runs
from tests.conftest import cpu_strategy

def fixture_params(fx):
  """The short runs' params (4 steps, an eval every 2), resolved."""
  return short_runs.resolved_params(fx)


@pytest.fixture(scope='module')
def fixture_data(tmp_path_factory):
  return make_fixture.make_fixture(
      str(tmp_path_factory.mktemp('fixture')),
      num_classes=short_runs.NUM_CLASSES, num_train=short_runs.NUM_TRAIN,
      num_eval=short_runs.NUM_EVAL, image_size=20)


def test_functions_are_built_before_the_clock_starts(fixture_data, tmp_path):
  params = fixture_params(fixture_data)
  model_dir = str(tmp_path / 'run')
  events = []

  def clock():
    events.append('clock')
    return time.monotonic()

  strategy = cpu_strategy(2)
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
    # Python code in a step runs only while tracing: log when that happens.
    for name in ('train_step', 'validation_step'):
      step = getattr(task, name)

      def traced(*args, _step=step, _name=name, **kwargs):
        events.append(f'trace {_name}')
        return _step(*args, **kwargs)
      setattr(task, name, traced)
    record = tta.RunRecord('fixture', {}, params.trainer.train_steps,
                           recipe.steps_per_epoch(params))
    timer = tta.TimeToAccuracy(record, model_dir, clock=clock)
    trainer = train_utils.create_trainer(
        params, task, train=True, evaluate=True,
        trainer_cls=functools.partial(timed_trainer.TimedTrainer,
                                      time_to_accuracy=timer))
  train_lib.run_experiment(
      distribution_strategy=strategy, task=task, mode='train_and_eval',
      params=params, model_dir=model_dir, trainer=trainer)

  first_clock = events.index('clock')
  traces = [i for i, e in enumerate(events) if e.startswith('trace')]
  assert {'trace train_step', 'trace validation_step'} <= set(events)
  assert max(traces) < first_clock, events  # Nothing traced on the clock.
  assert params.trainer.train_steps == short_runs.TRAIN_STEPS
  assert [e.step for e in record.evals] == list(short_runs.EVAL_STEPS)
  assert 0 < record.evals[0].elapsed_s < record.evals[1].elapsed_s
  assert record.train_images == short_runs.TRAIN_STEPS * params.task.train_data.global_batch_size

  # The clock is saved with the checkpoint, at the last train loop's end.
  saved = tf.train.load_variable(
      tf.train.latest_checkpoint(model_dir),
      'time_to_accuracy_s/.ATTRIBUTES/VARIABLE_VALUE')
  assert record.evals[0].elapsed_s < saved <= record.evals[1].elapsed_s + 1e-3
  with open(os.path.join(model_dir, tta.SUMMARY_FILE)) as f:
    summary = json.load(f)
  assert [e['step'] for e in summary['evals']] == list(short_runs.EVAL_STEPS)
