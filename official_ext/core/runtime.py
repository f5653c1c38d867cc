"""Runtime helpers: N logical CPU replicas on one host, and strategy choice.

On one CPU host, `runtime.num_cpu_replicas = N` splits the CPU into N logical
devices and trains with MirroredStrategy over them: the same code path
(per-replica batches, all-reduce, grouped BN) as a GPU host or TPU slice.
"""
import tensorflow as tf


def configure_logical_cpus(num_devices: int) -> None:
  """Splits the physical CPU into `num_devices` logical devices.

  Must run before TensorFlow initializes its devices. Asking again for at
  most as many devices as are already configured is a no-op (an earlier,
  larger split serves fewer replicas too); asking for more after
  initialization is an error.
  """
  cpus = tf.config.list_physical_devices('CPU')
  current = tf.config.get_logical_device_configuration(cpus[0])
  if current is not None and len(current) >= num_devices:
    return
  try:
    tf.config.set_logical_device_configuration(
        cpus[0],
        [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
  except RuntimeError as e:
    have = len(tf.config.list_logical_devices('CPU'))
    if have >= num_devices:
      return
    raise RuntimeError(
        f'cannot split the CPU into {num_devices} logical devices: TensorFlow '
        f'already initialized {have}; set runtime.num_cpu_replicas before any '
        'TensorFlow op runs') from e


def mirrored_cpu_strategy(num_replicas: int) -> tf.distribute.Strategy:
  """MirroredStrategy over the first `num_replicas` logical CPU devices."""
  devices = [d.name for d in tf.config.list_logical_devices('CPU')]
  if num_replicas > len(devices):
    raise ValueError(
        f'num_cpu_replicas={num_replicas} but only {len(devices)} logical CPU '
        'devices exist')
  return tf.distribute.MirroredStrategy(
      devices=devices[:num_replicas],
      cross_device_ops=tf.distribute.ReductionToOneDevice())
