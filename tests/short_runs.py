"""Short real train_and_eval runs of train.py on a tiny fixture, for tests.

Each run is the demo experiment (LARS, warmup, polynomial decay, 2 CPU
replicas) on a 4-class fixture at 16 px: 4 steps, an evaluation after each
of its 2 epochs. Extra params_override entries make runs differ.
"""
import concurrent.futures
import copy
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = 'effnet_b0_digits'
NUM_CLASSES, NUM_TRAIN, NUM_EVAL = 4, 32, 12
TRAIN_STEPS, EVAL_STEPS = 4, (2, 4)


def _merge(base, extra):
  merged = copy.deepcopy(base)
  for key, value in extra.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = _merge(merged[key], value)
    else:
      merged[key] = value
  return merged


def override(fixture, extra=None):
  base = {
      'task': {
          'model': {'num_classes': NUM_CLASSES, 'input_size': [16, 16, 3]},
          'train_data': {'embedded_dataset': '', 'num_examples': NUM_TRAIN,
                         'input_path': fixture.train_pattern,
                         'global_batch_size': 16},
          'validation_data': {'embedded_dataset': '',
                              'num_examples': NUM_EVAL,
                              'input_path': fixture.eval_pattern,
                              'global_batch_size': 8}},
      'trainer': {'train_epochs': 2.0, 'eval_every_epochs': 1.0,
                  'steps_per_loop': 2},
      'runtime': {'num_cpu_replicas': 2},
  }
  return _merge(base, extra or {})


def resolved_params(fixture, extra=None):
  """The short run's ExperimentConfig, overridden and resolved in-process."""
  # Imported here: tests that only launch train.py need no Model Garden.
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  import experiments  # pylint: disable=g-import-not-at-top,unused-import
  from official_ext.core import recipe  # pylint: disable=g-import-not-at-top
  params = exp_factory.get_exp_config(EXPERIMENT)
  params.override(override(fixture, extra), is_strict=True)
  return recipe.resolve(params)


def launch(model_dir, fixture, extra=None, timeout=900,
           mode='train_and_eval', flags=()):
  """Runs train.py --mode=`mode` [flags]; returns the CompletedProcess.

  TensorFlow's log level is left to train.py, as on a user's console.
  """
  override_file = str(model_dir) + '.override.yaml'
  with open(override_file, 'w') as f:
    yaml.safe_dump(override(fixture, extra), f)
  env = dict(os.environ)
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'train.py'),
       f'--experiment={EXPERIMENT}', f'--mode={mode}',
       f'--model_dir={model_dir}', f'--params_override={override_file}',
       *flags],
      capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def start(*args, **kwargs) -> concurrent.futures.Future:
  """`launch(...)` in a thread, so that two runs' tracing (Python, one core
  each) overlaps on a 2-core host; the future's `result()` is its
  CompletedProcess."""
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  future = pool.submit(launch, *args, **kwargs)
  pool.shutdown(wait=False)  # the thread ends with its run
  return future
