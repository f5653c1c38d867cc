"""benchmarks/scaling.py's TPU-v3 projection, on fixed measured inputs.

The measurement half needs minutes; the projection is arithmetic on the
model's gradient bytes and BN channels, checked here against the paper's
Table 1 and against hand-computed ring costs.
"""
import pytest

from benchmarks import scaling
from benchmarks import vs_model_garden

# B2 as the benchmark measures it: 9,109,994 float32 parameters, 69 BN
# layers of 33,784 channels in all (spread evenly here).
B2 = scaling.Measured(
    model='b2', params=9_109_994, gradient_bytes=4 * 9_109_994,
    gradient_tensors=301, bn_channels=[33_784 // 69] * 69, trace_s=0.0,
    compute_s={1: 0.3}, allreduce_s={}, floor_s={})
ICI = scaling.Interconnect(bytes_per_s_each_way=41e9, hop_s=1e-6,
                           overhead_s=5e-6)


def test_ring_cost_is_bandwidth_plus_hops():
  # 8 chips, 80 MB: 14 hops of 1 us + 14/8 x 80 MB over 2 x 41 GB/s.
  assert ICI.ring(80e6, 8) == pytest.approx(14e-6 + 14 / 8 * 80e6 / 82e9)
  assert ICI.ring(80e6, 1) == 0.0
  # A small message takes the tree: 2 x (8//2 + 1//2) = 8 hops.
  assert ICI.all_reduce(4096, (8, 1)) == pytest.approx(
      5e-6 + 8 * (1e-6 + 4096 / 41e9))


def test_bn_groups_past_16_replicas_are_2d_tiles():
  assert scaling.bn_tile(128, 16) == (8, 1)
  assert sorted(scaling.bn_tile(512, 64)) == [4, 8]
  assert scaling.bn_tile(1024, 4) == (2, 1)


def test_projection_keeps_the_calibration_row_and_scales_near_linearly():
  rows = {p.row.tpu_cores: p for p in scaling.project(
      B2, ICI, scaling.TABLE_1_PER_CORE_BATCH) if p.row.optimizer == 'lars'
          or p.row.tpu_cores in (128, 256)}
  assert rows[128].images_per_ms == pytest.approx(57.57)
  for cores in (256, 512, 1024):
    paper = scaling.PAPER_TABLE_1[('b2', cores)][0]
    assert 0.9 < rows[cores].images_per_ms / paper < 1.1
    # The gradient all-reduce over a ring barely grows with the slice.
    assert rows[cores].gradients_share < 1.2 * rows[128].gradients_share
  ratios = scaling.share_ratios([B2], ICI)
  assert 0.5 <= min(ratios) and max(ratios) <= 2.0, ratios


def test_benchmark_flags_are_one_line_errors(capsys):
  assert scaling.main(['--models', 'b9']) == 2
  assert capsys.readouterr().err.startswith("error: --models='b9'")
  assert scaling.main(['--replicas', '16']) == 2
  assert vs_model_garden.main(['--settings', '9']) == 2
  assert capsys.readouterr().err.count('\n') == 2
