"""Replica group assignments for grouped (distributed) batch normalization.

Grouped BN reduces batch statistics over a group of replicas; a group
assignment is a list of groups, each a list of replica ids, every replica in
exactly one group (the `group_assignment` format of TPU `cross_replica_sum`).

Layouts (`task.model.norm_activation.bn_group_layout`):

* `'contiguous'` (the EfficientNet reference code): replica r is in group
  r // group_size.
* `'tiles'` (Google's MLPerf v0.7 TPU code), at every group size: the cores
  lie on a 2-D chip mesh (TPU-v3: 2 cores per chip; 1024 cores = 16 x 32
  chips, 2048 = 32 x 32); a group is a rectangular tile of chips, walked as a
  ring so that consecutive members (and the last and the first) are on the
  same chip or on neighbouring chips; the tile repeats across the mesh. Tile
  shapes are the most square that tile the mesh evenly: 8 cores -> 2x2 chips,
  16 -> 2x4, 32 -> 4x4, 64 -> 4x8, where "2x4" has its long side (4 chips)
  along the mesh axis along which the device assignment numbers chips
  fastest (MLPerf's convention; `fast_axis`).
* `'auto'` (the default): contiguous up to 16 replicas per group (the
  reference code), tiles past 16 (the paper: "for groups larger than 16
  replicas, groups are 2-D tiles"); contiguous where there is no 2-D chip
  mesh (CPU and GPU hosts, and 3-D TPU-v4 meshes, whose default device
  assignment already numbers replicas along a 3-D ring).

Replica numbering on a mesh. Without `replica_coordinates`, replica
`(y * mesh_x + x) * cores_per_chip + core` is core `core` of chip (x, y):
x fastest, the two cores of a chip consecutive, which is how
`tf.tpu.experimental.DeviceAssignment.build` numbers a full 2-D slice. With
`replica_coordinates` (replica id -> (x, y, core)), the given mapping is used;
on a TPU slice it comes from the device assignment
(`group_assignment_from_device_assignment`).

The module is pure Python: it reads a DeviceAssignment through its public
methods and never imports TensorFlow.
"""
from typing import (Callable, Dict, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple, Union)

Coordinates = Tuple[int, int, int]  # (x, y, core)
ReplicaCoordinates = Union[Mapping[int, Sequence[int]],
                           Callable[[int], Sequence[int]]]

LAYOUTS = ('auto', 'contiguous', 'tiles')
# 'auto' tiles groups of more than this many replicas (the paper).
AUTO_TILING_THRESHOLD = 16
X_AXIS, Y_AXIS = 0, 1

# Chip meshes (x, y) of full TPU-v3 slices by core count, as
# `DeviceAssignment.build` lays them out (x numbered fastest). Used to check
# BN groups at config time; at run time the slice's own device assignment
# decides.
TPU_V3_CHIP_MESH: Dict[int, Tuple[int, int]] = {
    8: (2, 2), 32: (4, 4), 64: (4, 8), 128: (8, 8), 256: (8, 16),
    512: (16, 16), 1024: (16, 32), 2048: (32, 32)}
TPU_V3_CORES_PER_CHIP = 2


def contiguous_groups(num_replicas: int, group_size: int) -> List[List[int]]:
  """Replica r in group r // group_size (the reference code's assignment)."""
  _check_group_size(num_replicas, group_size)
  return [list(range(start, start + group_size))
          for start in range(0, num_replicas, group_size)]


def tile_shape(mesh_shape: Tuple[int, int], num_chips: int,
               fast_axis: int = X_AXIS) -> Tuple[int, int]:
  """The chip tile (tx, ty) of `num_chips` chips for a (mesh_x, mesh_y) mesh.

  Among tiles with tx * ty == num_chips that tile the mesh evenly (tx divides
  mesh_x, ty divides mesh_y): the most square one, with its long side along
  `fast_axis` where that fits. With x fastest: 4 chips -> (2, 2),
  8 -> (4, 2), 16 -> (4, 4), 32 -> (8, 4).
  """
  mesh_x, mesh_y = _check_mesh(mesh_shape)
  if fast_axis not in (X_AXIS, Y_AXIS):
    raise ValueError(f'fast_axis must be 0 (x) or 1 (y), got {fast_axis}')
  if num_chips < 1:
    raise ValueError(f'a tile needs at least one chip, got {num_chips}')
  if num_chips > mesh_x * mesh_y:
    raise ValueError(f'a tile of {num_chips} chips does not fit the '
                     f'{mesh_x}x{mesh_y} chip mesh')
  candidates = [(tx, num_chips // tx) for tx in range(1, mesh_x + 1)
                if num_chips % tx == 0 and mesh_x % tx == 0
                and mesh_y % (num_chips // tx) == 0]
  if not candidates:
    raise ValueError(f'no rectangular tile of {num_chips} chips tiles the '
                     f'{mesh_x}x{mesh_y} chip mesh evenly')

  def preference(tile):
    tx, ty = tile
    long_along_fast = tx >= ty if fast_axis == X_AXIS else ty >= tx
    return (max(tx, ty) / min(tx, ty), not long_along_fast)
  return min(candidates, key=preference)


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
                 tile: Optional[Tuple[int, int]] = None,
                 fast_axis: Optional[int] = None) -> List[List[int]]:
  """Groups that are rectangular chip tiles of the mesh, each in ring order.

  Args:
    mesh_shape: (chips along x, chips along y).
    cores_per_chip: cores (replicas) per chip; 2 on TPU-v3.
    group_size: replicas per group; a multiple of cores_per_chip.
    replica_coordinates: replica id -> (x, y, core), a mapping or a callable.
      Default: replica = (y * mesh_x + x) * cores_per_chip + core.
    tile: (tx, ty) chips per tile; default `tile_shape(mesh_shape, chips,
      fast_axis)`.
    fast_axis: the mesh axis along which replica ids advance fastest;
      default: read from the numbering (`fast_axis`).

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
  replica_at = _replica_lookup(mesh_x, mesh_y, cores_per_chip,
                               replica_coordinates)
  num_chips = group_size // cores_per_chip
  if tile is None:
    if fast_axis is None:
      fast_axis = _fast_axis_of_lookup(replica_at)
    try:
      tile = tile_shape((mesh_x, mesh_y), num_chips, fast_axis)
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
  ring = tile_ring(tx, ty)
  return [[replica_at[(x0 + i, y0 + j, core)]
           for i, j in ring for core in range(cores_per_chip)]
          for y0 in range(0, mesh_y, ty) for x0 in range(0, mesh_x, tx)]


def group_assignment(num_replicas: int,
                     group_size: int,
                     mesh_shape: Optional[Tuple[int, int]] = None,
                     cores_per_chip: int = TPU_V3_CORES_PER_CHIP,
                     replica_coordinates: Optional[ReplicaCoordinates] = None,
                     *,
                     layout: str = 'auto') -> List[List[int]]:
  """The grouped-BN assignment of `layout` (see the module docstring).

  group_size 1 gives singletons whatever the layout. 'tiles' needs
  `mesh_shape`; 'auto' tiles only groups of more than 16 replicas and only
  with a mesh.
  """
  check_layout(layout)
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
  if not uses_tiles(layout, group_size, has_mesh=mesh_shape is not None):
    return contiguous_groups(num_replicas, group_size)
  if mesh_shape is None:
    raise ValueError(f"layout 'tiles' (group_size={group_size}) needs a 2-D "
                     'chip mesh: a TPU-v2/v3 slice, or runtime.device_mesh')
  return tiled_groups(mesh_shape, cores_per_chip, group_size,
                      replica_coordinates)


def uses_tiles(layout: str, group_size: int, has_mesh: bool = True) -> bool:
  """Whether `layout` makes 2-D tiles of groups of `group_size` replicas."""
  check_layout(layout)
  if group_size <= 1 or layout == 'contiguous':
    return False
  if layout == 'tiles':
    return True
  return has_mesh and group_size > AUTO_TILING_THRESHOLD


def check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f'bn_group_layout={layout!r}; use one of '
                     f'{", ".join(repr(l) for l in LAYOUTS)}')


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


# ------------------------------------------------------- TPU device layout
class TpuLayout(NamedTuple):
  """Replica placement on a TPU slice, read from its device assignment.

  coordinates: replica -> (x, y, core) on a 2-D mesh, shifted so the slice
    starts at chip (0, 0); None on a 3-D mesh.
  mesh_shape: chips along each axis ((x, y), or (x, y, z) on a 3-D mesh).
  cores_per_chip: replicas per chip (TPU-v3: 2; v4 megacore: 1).
  fast_axis: the mesh axis along which replica ids advance fastest.
  """
  coordinates: Optional[Dict[int, Coordinates]]
  mesh_shape: Tuple[int, ...]
  cores_per_chip: int
  fast_axis: int


def tpu_layout(device_assignment) -> TpuLayout:
  """Reads every replica's chip and core from a TPU `DeviceAssignment`.

  Uses the public `DeviceAssignment.coordinates(replica, logical_core=0)`,
  which gives (x, y, z, core) in the slice's topology. One core per replica.
  """
  if device_assignment.num_cores_per_replica != 1:
    raise ValueError('grouped BN needs one core per replica, got '
                     f'{device_assignment.num_cores_per_replica}')
  raw = {r: tuple(int(c) for c in device_assignment.coordinates(r, 0))
         for r in range(device_assignment.num_replicas)}
  if any(len(c) != 4 for c in raw.values()):
    raise ValueError('expected (x, y, z, core) TPU coordinates')
  low = [min(c[axis] for c in raw.values()) for axis in range(3)]
  chips = {r: tuple(c[axis] - low[axis] for axis in range(3))
           for r, c in raw.items()}
  mesh = tuple(max(c[axis] for c in chips.values()) + 1 for axis in range(3))
  cores_per_chip = int(device_assignment.topology.mesh_shape[-1])
  fast_axis = _fast_axis([chips[r] for r in range(len(chips))])
  if mesh[2] > 1:
    return TpuLayout(None, mesh, cores_per_chip, fast_axis)
  coordinates = {r: (chips[r][0], chips[r][1], raw[r][3]) for r in raw}
  return TpuLayout(coordinates, mesh[:2], cores_per_chip, fast_axis)


def group_assignment_from_device_assignment(device_assignment,
                                            group_size: int,
                                            layout: str = 'auto'
                                            ) -> List[List[int]]:
  """Grouped-BN replica groups on the slice of a TPU `DeviceAssignment`.

  Args:
    device_assignment: a `tf.tpu.experimental.DeviceAssignment` (the one the
      TPUStrategy was built with; `DeviceAssignment.build(topology,
      num_replicas=n)` with the topology `initialize_tpu_system` returns).
    group_size: replicas per group.
    layout: 'auto' (contiguous ids up to 16 replicas per group, 2-D chip
      tiles past 16), 'contiguous', or 'tiles' (MLPerf's tiles at every size;
      the tile's long side along the axis the assignment numbers fastest).

  Returns:
    Groups of replica ids, every replica in exactly one group.
  """
  check_layout(layout)
  num_replicas = device_assignment.num_replicas
  if not uses_tiles(layout, group_size):
    return group_assignment(num_replicas, group_size, layout='contiguous')
  placement = tpu_layout(device_assignment)
  if placement.coordinates is None:
    if layout == 'tiles':
      raise ValueError(
          "bn_group_layout='tiles' needs a 2-D chip mesh; this slice's mesh "
          f'is {"x".join(map(str, placement.mesh_shape))} chips (3-D); use '
          "'auto' or 'contiguous'")
    return group_assignment(num_replicas, group_size, layout='contiguous')
  _check_group_size(num_replicas, group_size)
  return tiled_groups(placement.mesh_shape, placement.cores_per_chip,
                      group_size, placement.coordinates,
                      fast_axis=placement.fast_axis)


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


def _fast_axis(chips: Sequence[Sequence[int]]) -> int:
  """The axis along which consecutive replicas most often step one chip."""
  votes = [0] * len(chips[0]) if chips else [0, 0]
  for a, b in zip(chips, chips[1:]):
    changed = [axis for axis in range(len(a)) if a[axis] != b[axis]]
    if len(changed) == 1:
      votes[changed[0]] += 1
  return max(range(len(votes)), key=lambda axis: (votes[axis], -axis))


def _fast_axis_of_lookup(replica_at: Dict[Coordinates, int]) -> int:
  by_replica = sorted((r, (x, y)) for (x, y, _), r in replica_at.items())
  return _fast_axis([chip for _, chip in by_replica])


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
