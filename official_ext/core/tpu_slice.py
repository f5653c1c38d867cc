"""A TPU slice: connecting to it, its cores, and its device assignment.

Grouped BN on a slice needs to know where each replica sits: its groups are
built from the `tf.tpu.experimental.DeviceAssignment` the TPUStrategy runs
with. TensorFlow has no public accessor for a strategy's device assignment,
so `build_strategy` always builds the strategy with an explicit one
(`DeviceAssignment.build(topology, num_replicas=cores)`, as Model Garden's
`distribute_utils` does on TPU-v5p) and remembers it for `device_assignment`.
"""
import socket
import threading
import time
import weakref
from typing import Optional

import tensorflow as tf

_DEVICE_ASSIGNMENTS = weakref.WeakKeyDictionary()


class TpuUnavailableError(RuntimeError):
  """The TPU named by --tpu / runtime.tpu cannot be reached or initialized."""


def is_tpu_strategy(strategy) -> bool:
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


# Bounds on reaching a TPU: its gRPC port must accept a connection within
# CONNECT_TIMEOUT_S, and its system must initialize within INIT_TIMEOUT_S
# (a v3-1024 slice takes a few minutes).
CONNECT_TIMEOUT_S = 60.0
INIT_TIMEOUT_S = 900.0


def connect(tpu: Optional[str], connect_timeout_s: float = CONNECT_TIMEOUT_S,
            init_timeout_s: float = INIT_TIMEOUT_S):
  """Connects to the TPU and initializes its system, within bounded waits.

  Returns (cluster resolver, topology). `tpu` is a TPU name, a grpc://
  address, or '' / 'local' for the TPU VM's own chips. Raises
  TpuUnavailableError with a one-line reason.
  """
  tpu = tpu or ''

  def unavailable(reason):
    return TpuUnavailableError(
        f'cannot reach TPU {tpu!r} ({reason}); pass --tpu=NAME of a TPU in '
        'this project and zone (or its grpc://IP:8470 address), or run on '
        'CPU with runtime.num_cpu_replicas=N')

  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    master = resolver.master() if tpu not in ('', 'local') else ''
  except (ValueError, RuntimeError, tf.errors.OpError, OSError) as e:
    raise unavailable(_first_line(e)) from e
  if master.startswith('grpc://'):
    _wait_for_port(master[len('grpc://'):], connect_timeout_s, unavailable)

  result = {}

  def initialize():
    try:
      if tpu not in ('', 'local'):
        tf.config.experimental_connect_to_cluster(resolver)
      result['topology'] = tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # pylint: disable=broad-except
      result['error'] = e

  # TensorFlow's initialization cannot be cancelled; a daemon thread lets
  # the process give up on it and exit.
  thread = threading.Thread(target=initialize, daemon=True)
  thread.start()
  thread.join(init_timeout_s)
  if thread.is_alive():
    raise unavailable(f'its TPU system did not initialize within '
                      f'{init_timeout_s:g} s')
  if 'error' in result:
    raise unavailable(_first_line(result['error'])) from result['error']
  return resolver, result['topology']


def _wait_for_port(address: str, timeout_s: float, unavailable) -> None:
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=5):
        return
    except (OSError, ValueError) as e:
      if time.monotonic() >= deadline:
        raise unavailable(f'no answer from {address} within {timeout_s:g} s: '
                          f'{_first_line(e)}') from e
      time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


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
