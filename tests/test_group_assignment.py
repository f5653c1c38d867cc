"""Tests for official_ext.modeling.layers.group_assignment (pure Python)."""
import pytest

from official_ext.modeling.layers import group_assignment as ga

# (cores, chip mesh) of TPU-v3 slices with 2 cores per chip.
SLICES = [(1024, (16, 32)), (1024, (32, 16)), (2048, (32, 32))]
# Documented tiles (cores per group -> (short, long) side in chips), MLPerf
# TPU code; the long side lies along the axis numbered fastest.
DOCUMENTED_TILES = {8: (2, 2), 16: (2, 4), 32: (4, 4), 64: (4, 8)}


def tile_along_x(group_size):
  """The documented tile as (tx, ty) when replica ids advance along x."""
  short, long = DOCUMENTED_TILES[group_size]
  return long, short


def default_coordinates(mesh_x, cores_per_chip=2):
  """Inverse of the default numbering replica = (y*mesh_x + x)*cpc + core."""
  def coords(replica):
    chip, core = divmod(replica, cores_per_chip)
    y, x = divmod(chip, mesh_x)
    return x, y, core
  return coords


def assert_partition(assignment, num_replicas, group_size):
  assert sorted(r for g in assignment for r in g) == list(range(num_replicas))
  assert all(len(g) == group_size for g in assignment)
  assert len(assignment) == num_replicas // group_size


def assert_tiles(assignment, coords, tile, mesh):
  """Each group is an aligned tx x ty chip tile walked as a physical ring."""
  tx, ty = tile
  tiles = set()
  for group in assignment:
    xyc = [coords(r) for r in group]
    chips = [(x, y) for x, y, _ in xyc]
    xs, ys = {x for x, _ in chips}, {y for _, y in chips}
    x0, y0 = min(xs), min(ys)
    assert set(chips) == {(x0 + i, y0 + j) for i in range(tx)
                          for j in range(ty)}
    assert x0 % tx == 0 and y0 % ty == 0
    tiles.add((x0, y0))
    # Ring: consecutive members (and last -> first) on the same chip or on
    # adjacent chips; the cores of a chip are consecutive.
    for (xa, ya, _), (xb, yb, _) in zip(xyc, xyc[1:] + xyc[:1]):
      assert abs(xa - xb) + abs(ya - yb) <= 1, group
    for k in range(0, len(chips), 2):
      assert chips[k] == chips[k + 1]
  assert len(tiles) == (mesh[0] // tx) * (mesh[1] // ty)


def test_contiguous_groups():
  assert ga.contiguous_groups(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert ga.contiguous_groups(4, 1) == [[0], [1], [2], [3]]
  assert ga.contiguous_groups(4, 4) == [[0, 1, 2, 3]]


@pytest.mark.parametrize('num_cores,mesh', SLICES)
@pytest.mark.parametrize('group_size', [8, 16, 32, 64])
def test_large_slices(num_cores, mesh, group_size):
  assignment = ga.group_assignment(num_cores, group_size, mesh, 2)
  assert_partition(assignment, num_cores, group_size)
  coords = default_coordinates(mesh[0])
  if group_size <= 16:
    assert assignment == ga.contiguous_groups(num_cores, group_size)
  else:
    assert_tiles(assignment, coords, tile_along_x(group_size), mesh)
  # The 2-D tiling itself, for every documented size.
  for tiled in (ga.tiled_groups(mesh, 2, group_size),
                ga.group_assignment(num_cores, group_size, mesh, 2,
                                    layout='tiles')):
    assert_partition(tiled, num_cores, group_size)
    assert_tiles(tiled, coords, tile_along_x(group_size), mesh)
  assert ga.group_assignment(num_cores, group_size, mesh, 2,
                             layout='contiguous') == ga.contiguous_groups(
                                 num_cores, group_size)


def test_tile_shapes():
  for mesh in [(16, 32), (32, 16), (32, 32)]:
    for cores, (short, long) in DOCUMENTED_TILES.items():
      assert ga.tile_shape(mesh, cores // 2) == (long, short)
      assert ga.tile_shape(mesh, cores // 2, fast_axis=1) == (short, long)
  # Generalisation: most square tile that tiles the mesh evenly, long side
  # along the fast axis where it fits.
  assert ga.tile_shape((4, 2), 4) == (2, 2)
  assert ga.tile_shape((8, 2), 8) == (4, 2)
  assert ga.tile_shape((2, 8), 8) == (2, 4)  # (4, 2) does not fit x = 2.
  assert ga.tile_shape((16, 16), 64) == (8, 8)
  assert ga.tile_shape((4, 4), 1) == (1, 1)
  assert ga.tile_shape((4, 4), 2) == (2, 1)


def test_tile_ring_is_a_physical_ring():
  for tx, ty in [(2, 2), (2, 4), (4, 4), (4, 8), (8, 4), (3, 4), (4, 3),
                 (6, 2)]:
    ring = ga.tile_ring(tx, ty)
    assert sorted(ring) == sorted((i, j) for i in range(tx)
                                  for j in range(ty))
    for (ia, ja), (ib, jb) in zip(ring, ring[1:] + ring[:1]):
      assert abs(ia - ib) + abs(ja - jb) == 1
  assert ga.tile_ring(2, 2) == [(0, 0), (0, 1), (1, 1), (1, 0)]
  assert ga.tile_ring(2, 4) == [(0, 0), (0, 1), (0, 2), (0, 3),
                                (1, 3), (1, 2), (1, 1), (1, 0)]


def test_16_cores_by_hand():
  # Mesh of 4 x 2 chips, 2 cores per chip; default numbering
  # replica = (y * 4 + x) * 2 + core:
  #   y=1:  8  9 | 10 11 | 12 13 | 14 15
  #   y=0:  0  1 |  2  3 |  4  5 |  6  7
  mesh = (4, 2)
  assert ga.group_assignment(16, 4, mesh) == [
      [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
  # Groups of 8 are contiguous by default (<= 16) ...
  assert ga.group_assignment(16, 8, mesh) == [
      [0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]]
  # ... and 2x2-chip tiles with layout 'tiles', ring (0,0) (0,1) (1,1)
  # (1,0) within each tile.
  assert ga.group_assignment(16, 8, mesh, layout='tiles') == [
      [0, 1, 8, 9, 10, 11, 2, 3], [4, 5, 12, 13, 14, 15, 6, 7]]
  # The whole mesh as one ring of 4x2 chips.
  assert ga.group_assignment(16, 16, mesh, layout='tiles') == [
      [0, 1, 8, 9, 10, 11, 12, 13, 14, 15, 6, 7, 4, 5, 2, 3]]


def test_16_cores_with_replica_coordinates():
  # A column-major device assignment: replica = (x * 2 + y) * 2 + core.
  #   y=1:  2  3 |  6  7 | 10 11 | 14 15
  #   y=0:  0  1 |  4  5 |  8  9 | 12 13
  coords = {(x * 2 + y) * 2 + c: (x, y, c)
            for x in range(4) for y in range(2) for c in range(2)}
  expected = [[0, 1, 2, 3, 6, 7, 4, 5], [8, 9, 10, 11, 14, 15, 12, 13]]
  assert ga.group_assignment(16, 8, (4, 2), 2, coords,
                             layout='tiles') == expected
  assert ga.tiled_groups((4, 2), 2, 8, coords.__getitem__) == expected
  # Contiguous groups ignore the coordinates (the reference code).
  assert ga.group_assignment(16, 4, (4, 2), 2, coords)[0] == [0, 1, 2, 3]


def test_replica_to_group():
  assert ga.replica_to_group([[0, 2], [1, 3]]) == [0, 1, 0, 1]
  assert ga.replica_to_group(ga.tiled_groups((4, 2), 2, 8)) == [
      0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]
  with pytest.raises(ValueError, match='replica 1 is in groups 0 and 1'):
    ga.replica_to_group([[0, 1], [1, 2]])
  with pytest.raises(ValueError, match=r'replica 5 in group 1 is outside'):
    ga.replica_to_group([[0, 1], [2, 5]])


def test_group_size_from_bn_batch():
  assert ga.group_size_from_bn_batch(64, 32) == 2
  assert ga.group_size_from_bn_batch(32, 32) == 1
  assert ga.group_size_from_bn_batch(None, 32) == 1
  with pytest.raises(ValueError, match='batch_norm_batch_size=48 is not a '
                     'multiple of the per-replica batch 32'):
    ga.group_size_from_bn_batch(48, 32)
  with pytest.raises(ValueError, match='batch_norm_batch_size=16'):
    ga.group_size_from_bn_batch(16, 32)
  with pytest.raises(ValueError, match='per_replica_batch must be >= 1'):
    ga.group_size_from_bn_batch(16, 0)


@pytest.mark.parametrize('call,message', [
    (lambda: ga.group_assignment(16, 0), 'group_size must be >= 1, got 0'),
    (lambda: ga.group_assignment(16, 3),
     'group_size=3 does not divide num_replicas=16'),
    (lambda: ga.group_assignment(16, 32),
     'group_size=32 is larger than num_replicas=16'),
    (lambda: ga.group_assignment(0, 1), 'num_replicas must be >= 1, got 0'),
    (lambda: ga.group_assignment(16, 4, (4, 4), 2),
     r'mesh_shape=\(4, 4\) with cores_per_chip=2 has 32 cores, but '
     'num_replicas=16'),
    (lambda: ga.group_assignment(16, 4, None, 2, {0: (0, 0, 0)}),
     'replica_coordinates needs mesh_shape'),
    (lambda: ga.group_assignment(6, 3, (3, 1), 2, layout='tiles'),
     'group_size=3 is not a multiple of cores_per_chip=2'),
    (lambda: ga.group_assignment(16, 4, layout='tiles'),
     "layout 'tiles' .* needs a 2-D chip mesh"),
    (lambda: ga.group_assignment(16, 4, layout='rows'),
     "bn_group_layout='rows'; use one of 'auto', 'contiguous', 'tiles'"),
    (lambda: ga.tile_shape((6, 2), 5),
     'no rectangular tile of 5 chips tiles the 6x2 chip mesh evenly'),
    (lambda: ga.tiled_groups((4, 2), 2, 16, tile=(8, 1)),
     'tile 8x1 does not fit the 4x2 chip mesh'),
    (lambda: ga.tiled_groups((6, 2), 2, 8, tile=(4, 1)),
     'tile 4x1 does not tile the 6x2 chip mesh evenly'),
    (lambda: ga.tiled_groups((4, 2), 2, 8, tile=(2, 1)),
     'tile 2x1 has 2 chips, but group_size=8 needs 4'),
    (lambda: ga.tiled_groups((3, 1), 2, 3),
     'group_size=3 is not a multiple of cores_per_chip=2'),
    (lambda: ga.tiled_groups((4, 2, 1), 2, 8),
     'mesh_shape must be two positive chip counts'),
    (lambda: ga.tile_shape((4, 2), 16), 'a tile of 16 chips does not fit'),
    (lambda: ga.tiled_groups((2, 1), 2, 2, {0: (0, 0, 0), 1: (0, 0, 0),
                                            2: (1, 0, 0), 3: (1, 0, 1)}),
     r'replicas 0 and 1 have the same coordinates \(0, 0, 0\)'),
    (lambda: ga.tiled_groups((2, 1), 2, 2, {0: (0, 0, 0), 1: (0, 0, 1),
                                            2: (1, 0, 0), 3: (2, 0, 1)}),
     r'replica 3 has coordinates \(2, 0, 1\), outside the 2x1 mesh'),
    (lambda: ga.tiled_groups((2, 1), 2, 2, {0: (0, 0, 0)}),
     'replica_coordinates has no entry for replica 1'),
])
def test_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
