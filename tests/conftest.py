"""Test session setup.

The host CPU is split into 8 logical devices once, before TensorFlow
initializes, so multi-replica tests run under a real MirroredStrategy
(`tests.conftest.cpu_strategy(n)`); single-device code runs on CPU:0.
"""
import os
import sys
import types

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from official_ext.core import runtime  # pylint: disable=g-import-not-at-top

NUM_LOGICAL_CPUS = 8
runtime.configure_logical_cpus(NUM_LOGICAL_CPUS)


def cpu_strategy(num_replicas):
  """A MirroredStrategy over the first `num_replicas` logical CPU devices."""
  return runtime.mirrored_cpu_strategy(num_replicas)


def _lr_override(lr_per_256):
  return {'trainer': {'optimizer_config': {
      'learning_rate': {'scaled_polynomial': {'lr_per_256': lr_per_256}}}}}


@pytest.fixture(scope='session')
def short_run(tmp_path_factory):
  """One finished short run of train.py (LR per 256 images 2.0).

  Returns a namespace: fixture, model_dir, result (the CompletedProcess,
  with the run's console), second (short_run_dirs' run, started alongside).
  """
  from official_ext.tools import make_fixture  # pylint: disable=g-import-not-at-top
  from tests import short_runs as runs  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('short_runs')
  fixture = make_fixture.make_fixture(
      str(root / 'fixture'), num_classes=runs.NUM_CLASSES,
      num_train=runs.NUM_TRAIN, num_eval=runs.NUM_EVAL, image_size=20)
  model_dir = root / 'lr2'
  # short_run_dirs' second run starts now: the two overlap on two cores.
  second = runs.start(root / 'lr1', fixture, _lr_override(1.0))
  result = runs.launch(model_dir, fixture, _lr_override(2.0))
  assert result.returncode == 0, result.stderr[-3000:]
  yield types.SimpleNamespace(fixture=fixture, model_dir=str(model_dir),
                              result=result, second=second)
  second.result()  # Not left running when no test asked for it.


@pytest.fixture(scope='session')
def short_run_dirs(short_run):
  """Two finished short runs that differ only in LR per 256 images.

  Returns {'fixture': the fixture, 'lr2': model_dir, 'lr1': model_dir}.
  """
  model_dir = os.path.join(os.path.dirname(short_run.model_dir), 'lr1')
  result = short_run.second.result()
  assert result.returncode == 0, result.stderr[-3000:]
  return {'fixture': short_run.fixture, 'lr2': short_run.model_dir,
          'lr1': model_dir}


def file_snapshot(directory):
  """{relative path: (size, mtime_ns)} of every file under directory, or
  None if it does not exist: equal snapshots mean nothing was written."""
  if not os.path.exists(directory):
    return None
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      info = os.stat(path)
      found[os.path.relpath(path, directory)] = (info.st_size,
                                                 info.st_mtime_ns)
  return found
