"""BN groups on TPU slices built on the CPU: constructed topologies.

`tf.tpu.experimental.Topology(mesh_shape, device_coordinates)` and
`DeviceAssignment.build(topology, num_replicas=n)` lay out a real slice
without a TPU; the groups must partition the replicas, tiles must be
rectangles of chips of the documented shapes walked as physical rings, and
the groups must be what reaches `cross_replica_sum` in the TPU branch of
grouped BN.
"""
import numpy as np
import pytest
import tensorflow as tf

from official_ext.modeling.layers import norm_layer_factory
from official_ext.modeling.layers import group_assignment as ga
from official_ext.modeling.layers import grouped_batch_norm
from official_ext.vision.configs import image_classification as exp_cfg

# TPU-v3 slices: cores -> (chips along x, chips along y); 2 cores per chip,
# hosts of 2x2 chips.
SLICES = {32: (4, 4), 1024: (16, 32), 2048: (32, 32)}
GROUP_SIZES = (2, 4, 8, 16, 32, 64)
# Chips per tile -> (short, long) side: MLPerf's 8 cores -> 2x2 chips,
# 16 -> 2x4, 32 -> 4x4, 64 -> 4x8; one and two chips below that.
TILE_SIDES = {1: (1, 1), 2: (1, 2), 4: (2, 2), 8: (2, 4), 16: (4, 4),
              32: (4, 8)}


def v3_topology(mesh_x, mesh_y, cores_per_chip=2):
  """A TPU-v3 slice topology whose hosts each hold 2x2 chips."""
  tasks = []
  for hy in range(0, mesh_y, 2):
    for hx in range(0, mesh_x, 2):
      tasks.append([[hx + x, hy + y, 0, core] for y in range(2)
                    for x in range(2) for core in range(cores_per_chip)])
  return tf.tpu.experimental.Topology(
      mesh_shape=[mesh_x, mesh_y, 1, cores_per_chip],
      device_coordinates=np.array(tasks, np.int32))


def chip_of(assignment, replica):
  x, y, _, _ = (int(c) for c in assignment.coordinates(replica, 0))
  return x, y


def assert_partition(groups, num_replicas, group_size):
  assert sorted(r for g in groups for r in g) == list(range(num_replicas))
  assert {len(g) for g in groups} == {group_size}


def assert_ring_tiles(groups, assignment, shape, mesh):
  """Every group is a tx x ty rectangle of chips, tiling the mesh, members
  in ring order (consecutive and last -> first on the same or adjacent
  chips)."""
  tx, ty = shape
  origins = set()
  for group in groups:
    chips = [chip_of(assignment, r) for r in group]
    x0, y0 = min(x for x, _ in chips), min(y for _, y in chips)
    assert set(chips) == {(x0 + i, y0 + j) for i in range(tx)
                          for j in range(ty)}, (group, chips)
    assert x0 % tx == 0 and y0 % ty == 0
    origins.add((x0, y0))
    for (xa, ya), (xb, yb) in zip(chips, chips[1:] + chips[:1]):
      assert abs(xa - xb) + abs(ya - yb) <= 1, (group, chips)
  assert len(origins) == (mesh[0] // tx) * (mesh[1] // ty)


@pytest.fixture(scope='module', params=sorted(SLICES))
def v3_slice(request):
  cores = request.param
  mesh = SLICES[cores]
  assignment = tf.tpu.experimental.DeviceAssignment.build(
      v3_topology(*mesh), num_replicas=cores)
  return cores, mesh, assignment


@pytest.mark.parametrize('layout', ga.LAYOUTS)
@pytest.mark.parametrize('group_size', GROUP_SIZES)
def test_groups_on_constructed_v3_slices(v3_slice, group_size, layout):
  cores, mesh, assignment = v3_slice
  if group_size > cores:
    pytest.skip('group larger than the slice')
  groups = ga.group_assignment_from_device_assignment(
      assignment, group_size, layout)
  assert_partition(groups, cores, group_size)
  tiled = layout == 'tiles' or (layout == 'auto' and group_size > 16)
  if not tiled:
    assert groups == [list(range(s, s + group_size))
                      for s in range(0, cores, group_size)]
    return
  # DeviceAssignment.build numbers chips along x fastest: the tile's long
  # side lies along x.
  assert chip_of(assignment, 2) == (1, 0)
  short, long = TILE_SIDES[group_size // 2]
  assert_ring_tiles(groups, assignment, (long, short), mesh)


def test_tile_orientation_follows_the_device_assignment():
  """With replica ids advancing along y, the long side lies along y."""
  mesh_x, mesh_y = 16, 32
  topology = v3_topology(mesh_x, mesh_y)
  core_assignment = [[[x, y, 0, core]] for x in range(mesh_x)
                     for y in range(mesh_y) for core in range(2)]
  assignment = tf.tpu.experimental.DeviceAssignment(
      topology, core_assignment=np.array(core_assignment, np.int32))
  assert chip_of(assignment, 2) == (0, 1)
  for group_size in (16, 64):
    groups = ga.group_assignment_from_device_assignment(
        assignment, group_size, 'tiles')
    assert_partition(groups, 1024, group_size)
    short, long = TILE_SIDES[group_size // 2]
    assert_ring_tiles(groups, assignment, (short, long), (mesh_x, mesh_y))


def test_3d_mesh_tiles_refused_auto_contiguous():
  """TPU-v4-like 2x2x4 chips, one core each: no 2-D tiles."""
  tasks = [[[x, y, z, 0] for x in range(2) for y in range(2)]
           for z in range(4)]
  topology = tf.tpu.experimental.Topology(
      mesh_shape=[2, 2, 4, 1], device_coordinates=np.array(tasks, np.int32))
  assignment = tf.tpu.experimental.DeviceAssignment.build(
      topology, num_replicas=16)
  assert ga.group_assignment_from_device_assignment(
      assignment, 8, 'auto') == [list(range(8)), list(range(8, 16))]
  with pytest.raises(ValueError, match="'tiles' needs a 2-D chip mesh"):
    ga.group_assignment_from_device_assignment(assignment, 8, 'tiles')


@pytest.mark.parametrize('group_size,layout', [(64, 'auto'), (8, 'tiles'),
                                               (4, 'contiguous')])
def test_tpu_branch_sends_the_device_assignment_groups_to_cross_replica_sum(
    group_size, layout):
  """Config -> device assignment -> grouped BN -> the traced TPU all-reduce."""
  cores, mesh = 1024, SLICES[1024]
  assignment = tf.tpu.experimental.DeviceAssignment.build(
      v3_topology(*mesh), num_replicas=cores)
  norm = exp_cfg.NormActivation(bn_group_size=group_size,
                                bn_group_layout=layout)
  groups = norm_layer_factory.replica_groups(norm, cores,
                                       device_assignment=assignment)
  assert groups == ga.group_assignment_from_device_assignment(
      assignment, group_size, layout)
  layer = grouped_batch_norm.GroupedBatchNormalization(
      group_size=group_size, group_assignment=groups)

  @tf.function
  def tpu_moments(x):
    return grouped_batch_norm.grouped_moments(
        x, [0, 1, 2], layer.group_size,
        grouped_batch_norm.tpu_group_sum(layer.group_assignment))

  graph = tpu_moments.get_concrete_function(
      tf.TensorSpec([2, 4, 4, 3], tf.float32)).graph
  sums = [op for op in graph.get_operations() if op.type == 'CrossReplicaSum']
  assert len(sums) == 1
  sent = tf.make_ndarray(sums[0].inputs[1].op.get_attr('value'))
  assert sent.tolist() == groups
  assert sent.shape == (cores // group_size, group_size)


def test_tpu_without_device_assignment_refuses_tiles():
  norm = exp_cfg.NormActivation(bn_group_size=64)
  with pytest.raises(ValueError, match='needs the TPUStrategy.s device'):
    norm_layer_factory.replica_groups(norm, 1024, on_tpu=True)
  norm = exp_cfg.NormActivation(bn_group_size=4)
  assert norm_layer_factory.replica_groups(norm, 16, on_tpu=True)[1] == [4, 5, 6, 7]
