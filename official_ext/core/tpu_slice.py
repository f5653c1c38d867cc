"""A TPU slice: connecting to it, its cores, and its device assignment.

Grouped BN on a slice needs to know where each replica sits: its groups are
built from the `tf.tpu.experimental.DeviceAssignment` the TPUStrategy runs
with. TensorFlow has no public accessor for a strategy's device assignment,
so `build_strategy` always builds the strategy with an explicit one
(`DeviceAssignment.build(topology, num_replicas=cores)`, as Model Garden's
`distribute_utils` does on TPU-v5p) and remembers it for `device_assignment`.
"""
import weakref
from typing import Optional, Tuple

import tensorflow as tf

_DEVICE_ASSIGNMENTS = weakref.WeakKeyDictionary()


class TpuUnavailableError(RuntimeError):
  """The TPU named by --tpu / runtime.tpu cannot be reached or initialized."""


def is_tpu_strategy(strategy) -> bool:
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


def connect(tpu: Optional[str]):
  """Connects to the TPU and initializes its system.

  Returns (cluster resolver, topology). `tpu` is a TPU name, a grpc://
  address, or '' / 'local' for the TPU VM's own chips.
  """
  tpu = tpu or ''
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    if tpu not in ('', 'local'):
      tf.config.experimental_connect_to_cluster(resolver)
    topology = tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise TpuUnavailableError(
        f'cannot reach TPU {tpu!r} ({first_line}); pass --tpu=NAME of a '
        'TPU in this project and zone, or run on CPU with '
        'runtime.num_cpu_replicas=N') from e
  return resolver, topology


def num_cores(topology) -> int:
  """TPU cores of the slice: one replica each."""
  return int(topology.num_tasks * topology.num_tpus_per_task)


def build_strategy(resolver, topology) -> tf.distribute.TPUStrategy:
  """TPUStrategy over every core, with an explicit device assignment."""
  assignment = tf.tpu.experimental.DeviceAssignment.build(
      topology, num_replicas=num_cores(topology))
  strategy = tf.distribute.TPUStrategy(
      resolver, experimental_device_assignment=assignment)
  _DEVICE_ASSIGNMENTS[strategy] = assignment
  return strategy


def device_assignment(strategy) -> Optional[
    tf.tpu.experimental.DeviceAssignment]:
  """The device assignment a TPUStrategy was built with, if known."""
  try:
    return _DEVICE_ASSIGNMENTS[strategy]
  except (KeyError, TypeError):
    # A strategy built elsewhere: TPUStrategy keeps it on its extended
    # object (no public accessor in TF 2.20).
    return getattr(strategy.extended, '_device_assignment', None)


def check_cores(live_cores: int, expected_cores: int,
                global_batch_size: int) -> Optional[str]:
  """None if the slice fits the experiment, else the one-line reason."""
  if expected_cores <= 0 or live_cores == expected_cores:
    return None
  per_core = global_batch_size / live_cores
  per_core_text = (f'{per_core:g}' if per_core == int(per_core)
                   else f'{per_core:.3g} (not whole)')
  return (f'the TPU slice has {live_cores} cores, but the experiment is set '
          f'for runtime.tpu_cores={expected_cores}; to train on this slice, '
          f'pass --params_override=runtime.tpu_cores={live_cores} (the '
          f'global batch {global_batch_size} becomes {per_core_text} per '
          'core; BN groups and batch-derived fields follow the new count)')


def slice_shape(topology) -> Tuple[int, ...]:
  """Chips per axis and cores per chip, e.g. (16, 32, 1, 2) on a v3-1024."""
  return tuple(int(d) for d in topology.mesh_shape)
