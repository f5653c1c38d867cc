"""The normalization layer of a run, chosen from its NormActivation config.

Local, synchronized or grouped batch norm, and the replica groups of grouped
BN (contiguous, or 2-D chip tiles from a TPU slice's device assignment). The
paper EfficientNet takes the factory this returns (`norm_layer_factory`).
"""
from typing import Callable, List, Optional

import tensorflow as tf
import tf_keras

from official.modeling import hyperparams
from official_ext.core import tpu_slice
from official_ext.modeling.layers import group_assignment as ga
from official_ext.modeling.layers import grouped_batch_norm

NormLayerFactory = Callable[..., tf_keras.layers.Layer]


def bn_group_assignment(norm_activation_config: hyperparams.Config,
                        strategy: Optional[tf.distribute.Strategy] = None
                        ) -> Optional[List[List[int]]]:
  """Replica groups for grouped BN under `strategy` (None: local BN).

  Under TPUStrategy the groups come from the device assignment it was built
  with (official_ext.core.tpu_slice); see `replica_groups`.
  """
  strategy = strategy or tf.distribute.get_strategy()
  on_tpu = tpu_slice.is_tpu_strategy(strategy)
  return replica_groups(
      norm_activation_config, strategy.num_replicas_in_sync,
      device_assignment=tpu_slice.device_assignment(strategy) if on_tpu
      else None, on_tpu=on_tpu)


def replica_groups(norm_activation_config: hyperparams.Config,
                   num_replicas: int,
                   device_assignment=None,
                   on_tpu: bool = False) -> Optional[List[List[int]]]:
  """The BN groups of `norm_activation` on `num_replicas` replicas.

  The groups of `bn_group_layout` ('auto': contiguous up to 16 replicas per
  group, 2-D chip tiles past 16): from the TPU `device_assignment` when
  given, else from `norm_activation.device_mesh` (derived from
  runtime.device_mesh). None means local BN.
  """
  group_size = int(getattr(norm_activation_config, 'bn_group_size', 1))
  layout = getattr(norm_activation_config, 'bn_group_layout', 'auto')
  if num_replicas == 1:
    return None
  if group_size < 1:
    raise ValueError(
        f'norm_activation.bn_group_size={group_size} is not resolved for the '
        f'{num_replicas} replicas (bn_group_rule='
        f'{getattr(norm_activation_config, "bn_group_rule", "fixed")!r}); '
        'resolve the params with official_ext.core.recipe.resolve(params, '
        'num_replicas=...) first')
  if group_size == 1:
    return None
  if device_assignment is not None:
    return ga.group_assignment_from_device_assignment(
        device_assignment, group_size, layout)
  if on_tpu:
    if ga.uses_tiles(layout, group_size):
      raise ValueError(
          f'bn_group_layout={layout!r} with groups of {group_size} needs the '
          "TPUStrategy's device assignment: build the strategy with "
          'official_ext.core.tpu_slice.build_strategy')
    return ga.contiguous_groups(num_replicas, group_size)
  mesh = tuple(getattr(norm_activation_config, 'device_mesh', ()) or ()) or None
  return ga.group_assignment(
      num_replicas, group_size, mesh_shape=mesh,
      cores_per_chip=int(getattr(norm_activation_config, 'cores_per_chip', 2)),
      layout=layout)


def make_norm_layer_factory(
    norm_activation_config: hyperparams.Config) -> NormLayerFactory:
  """Chooses the normalization layer from a NormActivation config.

  `bn_group_size` > 1 (official_ext's NormActivation): grouped batch norm
  whose statistics are shared by groups of that many replicas (the groups of
  `bn_group_layout`; see `bn_group_assignment`); otherwise
  `use_sync_bn`: tf_keras synchronized BN over all replicas; otherwise plain
  per-replica BN.
  """
  # Checks the groups fit the strategy's replicas (and that the group size is
  # resolved) even where no group forms.
  assignment = bn_group_assignment(norm_activation_config)
  group_size = int(getattr(norm_activation_config, 'bn_group_size', 1))
  if group_size > 1:
    def grouped(**kwargs):
      return grouped_batch_norm.GroupedBatchNormalization(
          group_size=group_size, group_assignment=assignment, **kwargs)
    return grouped
  if getattr(norm_activation_config, 'use_sync_bn', False):
    def synchronized(**kwargs):
      return tf_keras.layers.BatchNormalization(synchronized=True, **kwargs)
    return synchronized
  return tf_keras.layers.BatchNormalization
