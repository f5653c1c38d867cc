"""Replica group assignments for grouped (distributed) batch normalization.

Grouped BN reduces batch statistics over a group of replicas; a group
assignment is a list of groups, each a list of replica ids, every replica in
exactly one group (the `group_assignment` format of TPU `cross_replica_sum`).

* Contiguous groups (the EfficientNet reference code): replica r is in group
  r // group_size.
* 2-D tiles (Google's MLPerf TPU code), used for groups of more than 16
  replicas: the cores lie on a chip mesh (TPU-v3: 2 cores per chip, 1024
  cores = 32 x 16 chips, 2048 = 32 x 32); a group is a rectangular tile of
  chips (8 cores -> 2x2 chips, 16 -> 2x4, 32 -> 4x4, 64 -> 4x8) and lists its
  cores in ring order, so that consecutive members (and the last and the
  first) are on the same chip or on neighbouring chips; the tile repeats
  across the mesh.

Replica numbering on the mesh. Without `replica_coordinates`, replica
`(y * mesh_x + x) * cores_per_chip + core` is core `core` of chip (x, y)
(x fastest, the two cores of a chip consecutive). With `replica_coordinates`
(replica id -> (x, y, core)), the given mapping is used instead; on a TPU
slice that is the device assignment (see `tpu_replica_coordinates`).

The module is pure Python; only `tpu_replica_coordinates` touches TensorFlow.
"""
from typing import (Callable, Dict, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple, Union)

Coordinates = Tuple[int, int, int]  # (x, y, core)
ReplicaCoordinates = Union[Mapping[int, Sequence[int]],
                           Callable[[int], Sequence[int]]]

# Groups of more than this many replicas are 2-D tiles (MLPerf TPU code).
TILING_THRESHOLD = 16


def contiguous_groups(num_replicas: int, group_size: int) -> List[List[int]]:
  """Replica r in group r // group_size (the reference code's assignment)."""
  _check_group_size(num_replicas, group_size)
  return [list(range(start, start + group_size))
          for start in range(0, num_replicas, group_size)]


def tile_shape(mesh_shape: Tuple[int, int], num_chips: int) -> Tuple[int, int]:
  """The chip tile (tx, ty) of `num_chips` chips for a (mesh_x, mesh_y) mesh.

  Among tiles with tx * ty == num_chips that tile the mesh evenly (tx divides
  mesh_x, ty divides mesh_y), the most square one, with tx <= ty on ties. This
  gives the documented shapes 4 chips -> 2x2, 8 -> 2x4, 16 -> 4x4, 32 -> 4x8
  wherever they fit.
  """
  mesh_x, mesh_y = _check_mesh(mesh_shape)
  if num_chips > mesh_x * mesh_y:
    raise ValueError(f'a tile of {num_chips} chips does not fit the '
                     f'{mesh_x}x{mesh_y} chip mesh')
  candidates = [(tx, num_chips // tx) for tx in range(1, mesh_x + 1)
                if num_chips % tx == 0 and mesh_x % tx == 0
                and mesh_y % (num_chips // tx) == 0]
  if not candidates:
    raise ValueError(f'no rectangular tile of {num_chips} chips tiles the '
                     f'{mesh_x}x{mesh_y} chip mesh evenly')
  return min(candidates, key=lambda t: (abs(t[0] - t[1]), t[0] > t[1]))


def tile_ring(tx: int, ty: int) -> List[Tuple[int, int]]:
  """The chips (i, j) of a tx x ty tile in ring (boustrophedon) order.

  If one side is even and both are >= 2, a Hamiltonian cycle: up the first
  column, then snake back row by row over the other columns, ending next to
  the start. A 1 x n tile is a line (a ring only for n <= 2); an odd x odd
  tile has no Hamiltonian cycle, so it is a snake whose last chip is not next
  to the first.
  """
  if tx < 1 or ty < 1:
    raise ValueError(f'tile shape must be positive, got {tx}x{ty}')
  if tx == 1 or ty == 1:
    return [(i, j) for j in range(ty) for i in range(tx)]
  if ty % 2 == 0:
    ring = [(0, j) for j in range(ty)]
    for step, j in enumerate(range(ty - 1, -1, -1)):
      cols = range(1, tx) if step % 2 == 0 else range(tx - 1, 0, -1)
      ring.extend((i, j) for i in cols)
    return ring
  if tx % 2 == 0:
    return [(i, j) for j, i in tile_ring(ty, tx)]
  return [(i if j % 2 == 0 else tx - 1 - i, j)
          for j in range(ty) for i in range(tx)]


def tiled_groups(mesh_shape: Tuple[int, int],
                 cores_per_chip: int,
                 group_size: int,
                 replica_coordinates: Optional[ReplicaCoordinates] = None,
                 *,
                 tile: Optional[Tuple[int, int]] = None) -> List[List[int]]:
  """Groups that are rectangular chip tiles of the mesh, each in ring order.

  Args:
    mesh_shape: (chips along x, chips along y).
    cores_per_chip: cores (replicas) per chip; 2 on TPU-v3.
    group_size: replicas per group; a multiple of cores_per_chip.
    replica_coordinates: replica id -> (x, y, core), a mapping or a callable.
      Default: replica = (y * mesh_x + x) * cores_per_chip + core.
    tile: (tx, ty) chips per tile; default `tile_shape(mesh_shape, chips)`.

  Returns:
    One list of replica ids per tile, tiles in y-major then x order; within a
    group the chips follow `tile_ring` and the cores of a chip are consecutive.
  """
  mesh_x, mesh_y = _check_mesh(mesh_shape)
  if cores_per_chip < 1:
    raise ValueError(f'cores_per_chip must be >= 1, got {cores_per_chip}')
  num_replicas = mesh_x * mesh_y * cores_per_chip
  _check_group_size(num_replicas, group_size)
  if group_size % cores_per_chip:
    raise ValueError(f'group_size={group_size} is not a multiple of '
                     f'cores_per_chip={cores_per_chip}')
  num_chips = group_size // cores_per_chip
  if tile is None:
    try:
      tile = tile_shape((mesh_x, mesh_y), num_chips)
    except ValueError as e:
      raise ValueError(f'group_size={group_size}: {e}') from None
  tx, ty = tile
  if tx * ty != num_chips:
    raise ValueError(f'tile {tx}x{ty} has {tx * ty} chips, but group_size='
                     f'{group_size} needs {num_chips}')
  if tx > mesh_x or ty > mesh_y:
    raise ValueError(f'tile {tx}x{ty} does not fit the {mesh_x}x{mesh_y} '
                     'chip mesh')
  if mesh_x % tx or mesh_y % ty:
    raise ValueError(f'tile {tx}x{ty} does not tile the {mesh_x}x{mesh_y} '
                     'chip mesh evenly')

  replica_at = _replica_lookup(mesh_x, mesh_y, cores_per_chip,
                               replica_coordinates)
  ring = tile_ring(tx, ty)
  return [[replica_at[(x0 + i, y0 + j, core)]
           for i, j in ring for core in range(cores_per_chip)]
          for y0 in range(0, mesh_y, ty) for x0 in range(0, mesh_x, tx)]


def group_assignment(num_replicas: int,
                     group_size: int,
                     mesh_shape: Optional[Tuple[int, int]] = None,
                     cores_per_chip: int = 2,
                     replica_coordinates: Optional[ReplicaCoordinates] = None,
                     *,
                     tiling_threshold: int = TILING_THRESHOLD
                     ) -> List[List[int]]:
  """The grouped-BN assignment: singletons, contiguous groups or 2-D tiles.

  group_size 1 gives singletons; groups of at most `tiling_threshold` (16)
  replicas, or any groups without a mesh, are contiguous; larger groups with
  a mesh are 2-D tiles (`tiled_groups`).
  """
  if num_replicas < 1:
    raise ValueError(f'num_replicas must be >= 1, got {num_replicas}')
  _check_group_size(num_replicas, group_size)
  if mesh_shape is not None:
    mesh_x, mesh_y = _check_mesh(mesh_shape)
    cores = mesh_x * mesh_y * cores_per_chip
    if cores != num_replicas:
      raise ValueError(
          f'mesh_shape={tuple(mesh_shape)} with cores_per_chip='
          f'{cores_per_chip} has {cores} cores, but num_replicas='
          f'{num_replicas}')
  elif replica_coordinates is not None:
    raise ValueError('replica_coordinates needs mesh_shape')
  if group_size == 1:
    return [[r] for r in range(num_replicas)]
  if mesh_shape is None or group_size <= tiling_threshold:
    return contiguous_groups(num_replicas, group_size)
  return tiled_groups(mesh_shape, cores_per_chip, group_size,
                      replica_coordinates)


def replica_to_group(assignment: Sequence[Sequence[int]]) -> List[int]:
  """Group index of each replica; checks that groups partition range(n)."""
  num_replicas = sum(len(g) for g in assignment)
  table = [-1] * num_replicas
  for index, group in enumerate(assignment):
    for replica in group:
      if not 0 <= replica < num_replicas:
        raise ValueError(f'replica {replica} in group {index} is outside '
                         f'0..{num_replicas - 1}')
      if table[replica] != -1:
        raise ValueError(f'replica {replica} is in groups {table[replica]} '
                         f'and {index}')
      table[replica] = index
  return table


def group_size_from_bn_batch(bn_batch_size: Optional[int],
                             per_replica_batch: int) -> int:
  """Group size for a BN batch (the reference flag `batch_norm_batch_size`).

  group_size = bn_batch_size / per_replica_batch; None means per-replica BN
  (group size 1).
  """
  if per_replica_batch < 1:
    raise ValueError(
        f'per_replica_batch must be >= 1, got {per_replica_batch}')
  if bn_batch_size is None:
    return 1
  if bn_batch_size < per_replica_batch or bn_batch_size % per_replica_batch:
    raise ValueError(f'batch_norm_batch_size={bn_batch_size} is not a '
                     f'multiple of the per-replica batch {per_replica_batch}')
  return bn_batch_size // per_replica_batch


class TpuLayout(NamedTuple):
  """Replica placement on a TPU slice, the inputs of `group_assignment`."""
  coordinates: Dict[int, Coordinates]  # replica -> (x, y, core)
  mesh_shape: Tuple[int, int]
  cores_per_chip: int


def tpu_replica_coordinates(strategy=None,
                            device_assignment=None) -> TpuLayout:
  """Reads (x, y, core) of every replica from a TPU device assignment.

  Best effort, untested here (no TPU). TF 2.20 has no public accessor for a
  TPUStrategy's device assignment, so pass the
  `tf.tpu.experimental.DeviceAssignment` the strategy was built with
  (`TPUStrategy(resolver, experimental_device_assignment=da)`; make one with
  `DeviceAssignment.build(topology, num_replicas=n)` from the topology
  `tf.tpu.experimental.initialize_tpu_system` returns). Given only a strategy,
  its private `extended._device_assignment` is read if set. Coordinates come
  from the public `DeviceAssignment.coordinates(replica, logical_core=0)`
  ((x, y, z, core) on a 2-D TPU-v2/v3 torus) and are shifted so the slice
  starts at chip (0, 0). One core per replica and z = 0 only.
  """
  if device_assignment is None:
    if strategy is None:
      raise ValueError('pass a TPUStrategy or a DeviceAssignment')
    device_assignment = getattr(strategy.extended, '_device_assignment', None)
    if device_assignment is None:
      raise ValueError(
          'the TPUStrategy has no explicit device assignment; build one with '
          'tf.tpu.experimental.DeviceAssignment.build(topology, '
          'num_replicas=n), pass it to TPUStrategy(experimental_device_'
          'assignment=...) and to tpu_replica_coordinates')
  if device_assignment.num_cores_per_replica != 1:
    raise ValueError('grouped BN tiling needs one core per replica, got '
                     f'{device_assignment.num_cores_per_replica}')
  raw = {r: tuple(int(c) for c in device_assignment.coordinates(r, 0))
         for r in range(device_assignment.num_replicas)}
  if any(len(c) != 4 or c[2] != 0 for c in raw.values()):
    raise ValueError('only 2-D (x, y, z=0, core) TPU meshes are supported')
  x0 = min(c[0] for c in raw.values())
  y0 = min(c[1] for c in raw.values())
  coordinates = {r: (c[0] - x0, c[1] - y0, c[3]) for r, c in raw.items()}
  mesh_shape = (max(c[0] for c in coordinates.values()) + 1,
                max(c[1] for c in coordinates.values()) + 1)
  cores_per_chip = int(device_assignment.topology.mesh_shape[-1])
  return TpuLayout(coordinates, mesh_shape, cores_per_chip)


# ------------------------------------------------------------------ helpers
def _check_group_size(num_replicas: int, group_size: int) -> None:
  if group_size < 1:
    raise ValueError(f'group_size must be >= 1, got {group_size}')
  if group_size > num_replicas:
    raise ValueError(f'group_size={group_size} is larger than num_replicas='
                     f'{num_replicas}')
  if num_replicas % group_size:
    raise ValueError(f'group_size={group_size} does not divide num_replicas='
                     f'{num_replicas}')


def _check_mesh(mesh_shape) -> Tuple[int, int]:
  if len(mesh_shape) != 2 or min(mesh_shape) < 1:
    raise ValueError(f'mesh_shape must be two positive chip counts (x, y), '
                     f'got {tuple(mesh_shape)}')
  return int(mesh_shape[0]), int(mesh_shape[1])


def _replica_lookup(mesh_x: int, mesh_y: int, cores_per_chip: int,
                    replica_coordinates: Optional[ReplicaCoordinates]
                    ) -> Dict[Coordinates, int]:
  """(x, y, core) -> replica id, checking the mapping is a bijection."""
  num_replicas = mesh_x * mesh_y * cores_per_chip
  if replica_coordinates is None:
    return {(x, y, core): (y * mesh_x + x) * cores_per_chip + core
            for y in range(mesh_y) for x in range(mesh_x)
            for core in range(cores_per_chip)}
  get = (replica_coordinates if callable(replica_coordinates)
         else replica_coordinates.__getitem__)
  lookup = {}
  for replica in range(num_replicas):
    try:
      coords = tuple(int(c) for c in get(replica))
    except (KeyError, IndexError) as e:
      raise ValueError(f'replica_coordinates has no entry for replica '
                       f'{replica}') from e
    x, y, core = coords if len(coords) == 3 else (None, None, None)
    if (x is None or not (0 <= x < mesh_x and 0 <= y < mesh_y
                          and 0 <= core < cores_per_chip)):
      raise ValueError(f'replica {replica} has coordinates {coords}, outside '
                       f'the {mesh_x}x{mesh_y} mesh with {cores_per_chip} '
                       'cores per chip')
    if coords in lookup:
      raise ValueError(f'replicas {lookup[coords]} and {replica} have the '
                       f'same coordinates {coords}')
    lookup[coords] = replica
  return lookup
