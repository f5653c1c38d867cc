"""Test session setup.

The host CPU is split into 8 logical devices once, before TensorFlow
initializes, so multi-replica tests run under a real MirroredStrategy
(`tests.conftest.cpu_strategy(n)`); single-device code runs on CPU:0.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from official_ext.core import runtime  # pylint: disable=g-import-not-at-top

NUM_LOGICAL_CPUS = 8
runtime.configure_logical_cpus(NUM_LOGICAL_CPUS)


def cpu_strategy(num_replicas):
  """A MirroredStrategy over the first `num_replicas` logical CPU devices."""
  return runtime.mirrored_cpu_strategy(num_replicas)
