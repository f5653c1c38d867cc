"""How many replicas share batch-norm statistics: the reference code's rules.

`task.model.norm_activation.bn_group_rule` picks one; the group size then
follows from the live replica count and the per-replica batch:

* `'fixed'`: `bn_group_size` as given, or, if `bn_batch_size` > 0,
  bn_batch_size / per-replica batch (the reference flag
  `batch_norm_batch_size`, which must then be a multiple of the per-replica
  batch).
* `'distributed_batch_norm'`: the reference's `DistributedBatchNormalization`
  (tensorflow/tpu `models/official/efficientnet/utils.py`, "used in
  arXiv 2011.00071"; its LARS runs). With 8 replicas or fewer the statistics
  are reduced over all replicas; past 8, groups of
  max(1, int(bn_batch_size / per-replica batch)) contiguous replicas, with
  `bn_batch_size` defaulting to the reference's 128: groups of 4 at 16k on
  512 cores and 32k on 1024 cores, 2 at 65k on 1024 cores.
* `'tpu_batch_norm'`: the reference's `TpuBatchNormalization` (its RMSProp
  runs): with 8 replicas or fewer, per-replica statistics (the reference
  skips the cross-replica sum on "2x2 or smaller slices"); past 8,
  max(8, replicas // 8) replicas per group: 16, 32 and 64 on 128, 256 and
  512 cores.

Either way the group size must divide the replica count (the reference code
reshapes the replica ids into [-1, group] and fails otherwise).
"""
RULES = ('fixed', 'distributed_batch_norm', 'tpu_batch_norm')
# The reference flag batch_norm_batch_size's default.
REFERENCE_BN_BATCH_SIZE = 128
# Both reference layers treat slices of up to 8 replicas (2x2 chips) apart.
SMALL_SLICE_REPLICAS = 8


def check_rule(rule: str) -> None:
  if rule not in RULES:
    raise ValueError(f'bn_group_rule={rule!r}; use one of '
                     f'{", ".join(repr(r) for r in RULES)}')


def is_derived(rule: str, bn_batch_size: int) -> bool:
  """Whether the group size follows from the replicas (not set by hand)."""
  return rule != 'fixed' or bn_batch_size > 0


def group_size(rule: str,
               num_replicas: int,
               per_replica_batch: int,
               bn_group_size: int = 1,
               bn_batch_size: int = 0) -> int:
  """Replicas per BN group under `rule` for this replica count and batch."""
  check_rule(rule)
  if num_replicas < 1:
    raise ValueError(f'num_replicas must be >= 1, got {num_replicas}')
  if per_replica_batch < 1:
    raise ValueError(
        f'per_replica_batch must be >= 1, got {per_replica_batch}')
  if bn_batch_size < 0:
    raise ValueError(f'bn_batch_size={bn_batch_size} must be >= 0')
  if rule == 'fixed':
    if bn_batch_size <= 0:
      size = bn_group_size
    elif (bn_batch_size < per_replica_batch
          or bn_batch_size % per_replica_batch):
      raise ValueError(f'bn_batch_size={bn_batch_size} is not a multiple of '
                       f'the per-replica batch {per_replica_batch}')
    else:
      size = bn_batch_size // per_replica_batch
  elif rule == 'distributed_batch_norm':
    if num_replicas <= SMALL_SLICE_REPLICAS:
      size = num_replicas
    else:
      size = max(1, (bn_batch_size or REFERENCE_BN_BATCH_SIZE)
                 // per_replica_batch)
  else:  # tpu_batch_norm
    size = (1 if num_replicas <= SMALL_SLICE_REPLICAS
            else max(SMALL_SLICE_REPLICAS,
                     num_replicas // SMALL_SLICE_REPLICAS))
  if size < 1:
    raise ValueError(f'bn_group_size={size} must be >= 1')
  if size > num_replicas or num_replicas % size:
    raise ValueError(
        f'bn_group_rule={rule!r} gives groups of {size} replicas, which do '
        f'not divide the {num_replicas} replicas')
  return size


def per_replica(global_batch_size: int, num_replicas: int,
                name: str = 'task.train_data.global_batch_size') -> int:
  """The per-replica batch, or an error naming the batch and replicas."""
  per, remainder = divmod(global_batch_size, num_replicas)
  if remainder or per < 1:
    raise ValueError(
        f'{name}={global_batch_size} is not divisible by the {num_replicas} '
        f'replicas; use a multiple of {num_replicas}')
  return per
