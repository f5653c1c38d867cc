r"""Table 1 report: compute and all-reduce measured here, projected to TPU-v3.

MEASURED on this host, for EfficientNet-B2 and B5 (this project's task:
paper backbone, loss, paper LARS + EMA; `--image_size` px, float32, one
fixed synthetic batch of `--per_replica_batch` images per replica):
  compute    the training step (forward, backward, optimizer update) traced
             once on one device; for N replicas, N copies of it run
             concurrently, so that N replicas share the host's cores as N
             logical CPU devices do (a MirroredStrategy step traced for 4
             replicas takes minutes per model here, 8 would not fit the
             10-minute budget);
  all-reduce the gradient reduction of a MirroredStrategy over N logical CPU
             devices (`runtime.mirrored_cpu_strategy`, ReductionToOneDevice):
             `ReplicaContext.all_reduce(SUM)` of per-replica tensors with the
             model's trainable-variable shapes, net of the same call
             returning its inputs (the floor);
  and, from the model itself: gradient bytes per step and the channels of
  every batch-norm layer.

PROJECTED to TPU-v3 slices of 128-1024 cores at 32 images per core (Table
1's setting), per step:  t = t_compute + t_gradients + t_bn  (no overlap):
  t_compute   per-core compute time of 32 images: the paper's own 128-core
              throughput of that model (the only Table 1 figure used as an
              input), less the projected communication at 128 cores; the
              same time on every slice (each core computes alone);
  t_gradients one fused all-reduce of the float32 gradients over the slice's
              chips (2 cores per chip reduce on chip, not modelled): a
              2-D ring, reduce-scatter along x, all-reduce of each 1/x shard
              along y, all-gather along x, on the chip mesh of
              `group_assignment.TPU_V3_CHIP_MESH`; each ring uses both
              directions of its links;
  t_bn        grouped batch norm: per BN layer two all-reduces per step
              (forward mean and mean of squares, backward their gradients),
              2 x channels float32 each, over the row's BN group (from the
              registered experiments: contiguous chips up to 16 replicas,
              2-D tiles past 16); a group within one chip costs the overhead
              only;
  a ring of p chips moving M bytes takes  2 (p-1) hop  +  2 (p-1)/p x M /
  (2 x link bandwidth), plus a fixed overhead per collective. Constants
  (flags): ICI link 656 Gbit/s both directions together, i.e. 41 GB/s each
  way (TPUv3, Jouppi et al., "A Domain-Specific Supercomputer for Training
  Deep Neural Networks", CACM 2020), 1 us per hop ("sub-microsecond"
  between neighbours, rounded up), 5 us of fixed cost per collective
  (an assumption; the paper states no latency). Small messages (the BN
  statistics) take the faster of the ring and a tree through the tile's
  centre (2 x (x//2 + y//2) hops). The printout shows how the shares move
  when each constant is doubled (or the bandwidth halved).
  Images/ms = 32 x cores / t; all-reduce share = (t_gradients + t_bn) / t.

Also printed: the Table 2 rows' cost in TPU-v3 core-hours for 350 epochs
from the same model (per-core compute proportional to the per-core batch;
evaluations every 4 epochs at a third of a training image's cost).

  python benchmarks/scaling.py                    # ~5 min on 2 cores
  python benchmarks/scaling.py --models b2 --replicas 1,2 --rounds 1
"""
import argparse
import dataclasses
import math
import os
import statistics
import sys
import threading
import time
from typing import Dict, List, Sequence, Tuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from official_ext.core import runtime  # pylint: disable=g-import-not-at-top

MAX_REPLICAS = 8
runtime.configure_logical_cpus(MAX_REPLICAS)

import numpy as np  # pylint: disable=g-import-not-at-top,g-bad-import-order
import tensorflow as tf
import tf_keras

from benchmarks import allreduce_share
from benchmarks import interleaved
from official.core import task_factory

import experiments  # pylint: disable=unused-import  (registers experiments)
from experiments import paper_table2
from official_ext.core import config_overrides
from official_ext.core import recipe
from official_ext.modeling.layers import group_assignment

# The paper's Table 1: (model, cores) -> (images per ms, % of time in
# all-reduce), at 32 images per core.
PAPER_TABLE_1 = {
    ('b2', 128): (57.57, 2.1), ('b2', 256): (113.73, 2.6),
    ('b2', 512): (227.13, 2.5), ('b2', 1024): (451.35, 2.81),
    ('b5', 128): (9.76, 0.89), ('b5', 256): (19.48, 1.24),
    ('b5', 512): (38.55, 1.24), ('b5', 1024): (77.44, 1.03),
}
TABLE_1_PER_CORE_BATCH = 32
CALIBRATION_CORES = 128
EXPERIMENTS = {'b2': 'effnet_b2_lars_32k', 'b5': 'effnet_b5_lars_32k'}
# Headline times of the paper (time to peak top-1).
PAPER_HEADLINE_MINUTES = {'effnet_b5_lars_65k': 64, 'effnet_b2_lars_32k': 18}
EPOCHS = 350
EVAL_EVERY_EPOCHS = 4
EVAL_COST_PER_IMAGE = 1 / 3  # forward only, against forward + backward
IMAGENET_TRAIN, IMAGENET_EVAL = 1281167, 50000
CORES_PER_CHIP = group_assignment.TPU_V3_CORES_PER_CHIP


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default='b2,b5')
  parser.add_argument('--replicas', default='1,2,4,8',
                      help=f'logical CPU replica counts (<= {MAX_REPLICAS})')
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--per_replica_batch', type=int, default=8)
  parser.add_argument('--steps', type=int, default=1,
                      help='timed steps per replica per round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--ici_gbit_s', type=float, default=656.0,
                      help='ICI link bandwidth, both directions together')
  parser.add_argument('--hop_latency_us', type=float, default=1.0)
  parser.add_argument('--collective_overhead_us', type=float, default=5.0)
  return parser.parse_args(argv)


@dataclasses.dataclass
class Measured:
  """What this host measured for one model."""
  model: str
  params: int
  gradient_bytes: int
  gradient_tensors: int
  bn_channels: List[int]
  trace_s: float
  compute_s: Dict[int, float]     # replicas -> seconds per step per replica
  allreduce_s: Dict[int, float]   # replicas -> seconds, net of the floor
  floor_s: Dict[int, float]


def single_device_params(experiment: str, image_size: int, batch: int):
  params = config_overrides.parse_configuration(experiment, lock=False)
  params.override({
      'runtime': {'num_cpu_replicas': 1, 'distribution_strategy': 'mirrored',
                  'tpu_cores': 0, 'device_mesh': [],
                  'mixed_precision_dtype': 'float32'},
      'task': {'model': {'input_size': [image_size, image_size, 3]},
               'train_data': {'global_batch_size': batch,
                              'dtype': 'float32'}}}, is_strict=True)
  recipe.resolve(params)
  params.validate()
  params.lock()
  return params


def concurrent_step_time(step, replicas: int, steps: int, rounds: int
                         ) -> float:
  """Median wall seconds per step when `replicas` copies run together."""
  times = []
  for _ in range(rounds):
    outputs = [None] * replicas

    def work(i):
      for _ in range(steps):
        outputs[i] = step()
      tf.nest.map_structure(lambda t: t.numpy(), outputs[i])

    threads = [threading.Thread(target=work, args=(i,))
               for i in range(replicas)]
    start = time.perf_counter()
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def allreduce_times(variables, replicas: int, rounds: int
                    ) -> Tuple[float, float]:
  """(all-reduce, floor) median seconds on `replicas` logical CPUs."""
  strategy = runtime.mirrored_cpu_strategy(replicas)
  grads = allreduce_share.per_replica_values(strategy, lambda r: [
      tf.ones(v.shape, v.dtype) for v in variables])

  @tf.function
  def allreduce():
    return strategy.run(lambda g: tf.distribute.get_replica_context()
                        .all_reduce(tf.distribute.ReduceOp.SUM, g),
                        args=(grads,))

  @tf.function
  def floor():
    return strategy.run(lambda g: [tf.identity(x) for x in g], args=(grads,))

  fns = {'allreduce': allreduce, 'floor': floor}
  for fn in fns.values():
    allreduce_share.sync(fn(), strategy)
  wall, _ = interleaved.time_interleaved(
      fns, 2, rounds, wait=lambda out: allreduce_share.sync(out, strategy))
  return statistics.median(wall['allreduce']), statistics.median(wall['floor'])


def measure(model_id: str, args, replica_counts: Sequence[int]) -> Measured:
  experiment = EXPERIMENTS[model_id]
  batch, size = args.per_replica_batch, args.image_size
  params = single_device_params(experiment, size, batch)
  start = time.perf_counter()
  with tf.device('/CPU:0'):
    task = task_factory.get_task(params.task)
    model = task.build_model()
    optimizer = task.create_optimizer(params.trainer.optimizer_config,
                                      params.runtime)
    metrics = task.build_metrics(training=True)
    allreduce_share.maybe_shadow_copy(optimizer, model)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-1, 1, [batch, size, size, 3]),
                         tf.float32)
    labels = tf.constant(rng.integers(0, params.task.model.num_classes,
                                      [batch]), tf.int32)

    @tf.function
    def step():
      return task.train_step((images, labels), model, optimizer, metrics)

    tf.nest.map_structure(lambda t: t.numpy(), step())
  trace_s = time.perf_counter() - start
  step()  # warm-up
  variables = model.trainable_variables
  bn_channels = [int(layer.moving_mean.shape[-1]) for layer in model.submodules
                 if isinstance(layer, tf_keras.layers.BatchNormalization)]
  compute, reduce, floor = {}, {}, {}
  for n in replica_counts:
    compute[n] = concurrent_step_time(step, n, args.steps, args.rounds)
    if n > 1:
      total, floor[n] = allreduce_times(variables, n, args.rounds)
      reduce[n] = max(0.0, total - floor[n])
    print(f'  {model_id} {n} replicas measured', flush=True)
  return Measured(
      model=model_id,
      params=sum(v.shape.num_elements() for v in variables),
      gradient_bytes=sum(v.shape.num_elements() * 4 for v in variables),
      gradient_tensors=len(variables), bn_channels=bn_channels,
      trace_s=trace_s, compute_s=compute, allreduce_s=reduce, floor_s=floor)


@dataclasses.dataclass(frozen=True)
class Interconnect:
  """TPU-v3 ICI as the projection models it."""
  bytes_per_s_each_way: float
  hop_s: float
  overhead_s: float

  def ring(self, num_bytes: float, chips: int) -> float:
    """Bandwidth-optimal all-reduce over a ring (or line) of `chips` chips."""
    if chips <= 1:
      return 0.0
    steps = 2 * (chips - 1)
    return (steps * self.hop_s
            + steps / chips * num_bytes / (2 * self.bytes_per_s_each_way))

  def tree(self, num_bytes: float, tile: Tuple[int, int]) -> float:
    """Latency-optimal all-reduce: reduce to the tile's centre, send back."""
    hops = 2 * sum(side // 2 for side in tile)
    return hops * (self.hop_s + num_bytes / self.bytes_per_s_each_way)

  def all_reduce(self, num_bytes: float, tile: Tuple[int, int]) -> float:
    """All-reduce over a (x, y) tile of chips, the faster of a 2-D ring
    (x rings, then y rings on 1/x of the data) and a tree; plus overhead."""
    tx, ty = tile
    return self.overhead_s + min(
        self.ring(num_bytes, tx) + self.ring(num_bytes / tx, ty),
        self.tree(num_bytes, tile))


def bn_tile(cores: int, group: int) -> Tuple[int, int]:
  """The chip tile of one BN group of `group` replicas on a v3 slice."""
  chips = max(1, group // CORES_PER_CHIP)
  if group <= group_assignment.AUTO_TILING_THRESHOLD:
    return (chips, 1)  # contiguous replica ids: a line along x
  return group_assignment.tile_shape(
      group_assignment.TPU_V3_CHIP_MESH[cores], chips)


def communication_s(measured: Measured, cores: int, group: int,
                    ici: Interconnect) -> Tuple[float, float]:
  """(gradient all-reduce, grouped-BN all-reduces) seconds per step."""
  gradients = ici.all_reduce(measured.gradient_bytes,
                             group_assignment.TPU_V3_CHIP_MESH[cores])
  if group <= 1:
    return gradients, 0.0
  tile = bn_tile(cores, group)
  bn = sum(2 * ici.all_reduce(2 * channels * 4, tile)
           for channels in measured.bn_channels)
  return gradients, bn


def table2_rows(model_id: str):
  """Registered Table 2 rows of this model with their resolved BN group."""
  for row in paper_table2.TABLE_2:
    if row.model_id == model_id:
      params = config_overrides.parse_configuration(row.name)
      yield row, params.task.model.norm_activation.bn_group_size


def compute_per_image_s(measured: Measured, ici: Interconnect) -> float:
  """Calibration: the paper's 128-core throughput less projected comm."""
  ips, _ = PAPER_TABLE_1[(measured.model, CALIBRATION_CORES)]
  row, group = next((r, g) for r, g in table2_rows(measured.model)
                    if r.tpu_cores == CALIBRATION_CORES)
  step_s = TABLE_1_PER_CORE_BATCH * CALIBRATION_CORES / (ips * 1e3)
  gradients, bn = communication_s(measured, row.tpu_cores, group, ici)
  return (step_s - gradients - bn) / TABLE_1_PER_CORE_BATCH


def print_measured(measured: Sequence[Measured], args) -> None:
  print(f'\nMEASURED on this host (tf {tf.__version__}, {os.cpu_count()} CPU '
        f'cores shared by the logical replicas; {args.image_size}x'
        f'{args.image_size} images, {args.per_replica_batch} per replica, '
        'float32; medians):')
  for m in measured:
    print(f'  {m.model}: {m.params:,} parameters, gradients '
          f'{m.gradient_bytes / 1e6:.1f} MB in {m.gradient_tensors} tensors '
          f'per step, {len(m.bn_channels)} BN layers ({sum(m.bn_channels):,} '
          f'channels); trace + first step {m.trace_s:.0f} s')
    print('    replicas  compute ms/step/replica  all-reduce ms (floor)  '
          'all-reduce share  host images/s')
    for n, compute in m.compute_s.items():
      reduce = m.allreduce_s.get(n, 0.0)
      floor = m.floor_s.get(n)
      share = reduce / (compute + reduce)
      ips = n * args.per_replica_batch / (compute + reduce)
      floor_text = f'({floor * 1e3:.1f})' if floor is not None else ''
      print(f'    {n:8d}  {compute * 1e3:23.1f}  {reduce * 1e3:12.1f} '
            f'{floor_text:>8s}  {share:16.4f}  {ips:13.1f}')
    counts = sorted(m.allreduce_s)
    if len(counts) >= 2:
      a, b = counts[0], counts[-1]
      per_extra = ((m.allreduce_s[b] - m.allreduce_s[a]) / (b - a))
      print(f'    the CPU reduction (add on one device, copy back) grows by '
            f'{per_extra * 1e3:.1f} ms per extra replica '
            f'({m.gradient_bytes / max(per_extra, 1e-9) / 1e9:.2f} GB/s); a '
            'TPU ring does not grow with the replicas')


@dataclasses.dataclass(frozen=True)
class Projected:
  row: paper_table2.Table2Row
  group: int
  images_per_ms: float
  gradients_share: float
  bn_share: float

  @property
  def share(self) -> float:
    return self.gradients_share + self.bn_share


def project(m: Measured, ici: Interconnect, per_core_batch=None
            ) -> List[Projected]:
  """The projection of every Table 2 row of this model (all per-core
  batches unless `per_core_batch`)."""
  per_image = compute_per_image_s(m, ici)
  rows = []
  for row, group in table2_rows(m.model):
    per_core = row.global_batch_size // row.tpu_cores
    if per_core_batch and per_core != per_core_batch:
      continue
    gradients, bn = communication_s(m, row.tpu_cores, group, ici)
    step = per_image * per_core + gradients + bn
    rows.append(Projected(row, group, row.global_batch_size / step / 1e3,
                          gradients / step, bn / step))
  return rows


def share_ratios(measured: Sequence[Measured], ici: Interconnect
                 ) -> List[float]:
  """Projected / paper all-reduce share for every Table 1 row."""
  return [p.share * 100 / PAPER_TABLE_1[(m.model, p.row.tpu_cores)][1]
          for m in measured
          for p in project(m, ici, TABLE_1_PER_CORE_BATCH)]


def print_projection(measured: Sequence[Measured], ici: Interconnect) -> None:
  print('\nPROJECTED to TPU-v3 (the model in the docstring; measured inputs: '
        'gradient bytes and BN channels; calibration input: the paper\'s '
        f'{CALIBRATION_CORES}-core images/ms per model) against the paper\'s '
        'Table 1 (measured on TPU-v3):')
  print('  model  cores  batch  row (BN group)              images/ms: '
        'projected  paper  ratio   all-reduce %: projected (grad+BN)  paper  '
        'ratio')
  for m in measured:
    rows = project(m, ici, TABLE_1_PER_CORE_BATCH)
    for p in rows:
      cores = p.row.tpu_cores
      paper_ips, paper_share = PAPER_TABLE_1[(m.model, cores)]
      label = f'{p.row.name} ({p.group})'
      mark = ' (calibration)' if cores == CALIBRATION_CORES else ''
      print(f'  {m.model:5s}  {cores:5d}  {p.row.global_batch_size:5d}'
            f'  {label:26s}  {p.images_per_ms:20.2f}  {paper_ips:5.2f}  '
            f'{p.images_per_ms / paper_ips:5.2f}   {100 * p.share:22.2f} '
            f'({100 * p.gradients_share:.2f}+{100 * p.bn_share:.2f})  '
            f'{paper_share:5.2f}  {100 * p.share / paper_share:5.2f}{mark}')
    by_cores = {p.row.tpu_cores: p for p in rows}
    low, high = min(by_cores), max(by_cores)
    projected = (by_cores[high].images_per_ms / by_cores[low].images_per_ms
                 * low / high)
    paper = (PAPER_TABLE_1[(m.model, high)][0]
             / PAPER_TABLE_1[(m.model, low)][0] * low / high)
    print(f'  {m.model} scaling efficiency {low} -> {high} cores: projected '
          f'{projected:.3f}, paper {paper:.3f}')
  print_cross_check(measured, ici)
  ratios = share_ratios(measured, ici)
  print(f'  all-reduce share, projected / paper: {min(ratios):.2f} to '
        f'{max(ratios):.2f}')
  for name, changed in (
      ('collective overhead x2', dataclasses.replace(
          ici, overhead_s=2 * ici.overhead_s)),
      ('hop latency x2', dataclasses.replace(ici, hop_s=2 * ici.hop_s)),
      ('link bandwidth / 2', dataclasses.replace(
          ici, bytes_per_s_each_way=ici.bytes_per_s_each_way / 2))):
    ratios = share_ratios(measured, changed)
    print(f'    sensitivity, {name}: {min(ratios):.2f} to {max(ratios):.2f}')


def print_cross_check(measured: Sequence[Measured], ici: Interconnect
                      ) -> None:
  """B5 from B2's calibration and the B5 / B2 compute cost measured here."""
  by_model = {m.model: m for m in measured}
  if not {'b2', 'b5'} <= set(by_model) or 1 not in by_model['b5'].compute_s:
    return
  b2, b5 = by_model['b2'], by_model['b5']
  sizes = {m: config_overrides.parse_configuration(EXPERIMENTS[m])
           .task.model.input_size[0] for m in ('b2', 'b5')}
  cost_ratio = b5.compute_s[1] / b2.compute_s[1]
  pixels = (sizes['b5'] / sizes['b2']) ** 2
  per_image = compute_per_image_s(b2, ici) * cost_ratio * pixels
  row, group = next((r, g) for r, g in table2_rows('b5')
                    if r.tpu_cores == CALIBRATION_CORES)
  step = per_image * TABLE_1_PER_CORE_BATCH + sum(
      communication_s(b5, row.tpu_cores, group, ici))
  ips = row.global_batch_size / step / 1e3
  paper = PAPER_TABLE_1[('b5', CALIBRATION_CORES)][0]
  print(f'  cross-check, B5 without its own calibration: B2\'s per-image TPU '
        f'compute x the B5/B2 step cost measured here ({cost_ratio:.2f}) x '
        f'the pixel ratio {sizes["b5"]}^2/{sizes["b2"]}^2 ({pixels:.2f}) '
        f'gives {ips:.2f} images/ms on {CALIBRATION_CORES} cores (paper '
        f'{paper:.2f}, ratio {ips / paper:.2f})')


def print_cost(measured: Sequence[Measured], ici: Interconnect) -> None:
  print(f'\nPROJECTED cost of each Table 2 row ({EPOCHS} epochs of '
        f'{IMAGENET_TRAIN:,} images, an evaluation of {IMAGENET_EVAL:,} '
        f'every {EVAL_EVERY_EPOCHS} epochs; TPU-v3 core-hours = cores x '
        'hours):')
  print('  row                     cores  batch  images/ms  train h  eval h  '
        'core-hours   paper headline')
  for m in measured:
    per_image = compute_per_image_s(m, ici)
    for p in project(m, ici):
      cores = p.row.tpu_cores
      train_h = EPOCHS * IMAGENET_TRAIN / (p.images_per_ms * 1e3) / 3600
      evals = math.ceil(EPOCHS / EVAL_EVERY_EPOCHS)
      eval_h = (evals * IMAGENET_EVAL * per_image * EVAL_COST_PER_IMAGE
                / cores / 3600)
      hours = train_h + eval_h
      headline = PAPER_HEADLINE_MINUTES.get(p.row.name)
      headline = f'{headline} min to peak top-1' if headline else ''
      print(f'  {p.row.name:22s}  {cores:5d}  {p.row.global_batch_size:5d}'
            f'  {p.images_per_ms:9.2f}  {train_h:7.2f}  {eval_h:6.2f}  '
            f'{cores * hours:10.0f}   {headline}')


def main(argv=None) -> int:
  args = parse_args(argv)
  models = [m for m in args.models.split(',') if m]
  replica_counts = sorted({int(n) for n in args.replicas.split(',') if n})
  bad = [m for m in models if m not in EXPERIMENTS]
  if bad or not models:
    print(f'error: --models={args.models!r}; use a comma list of '
          f'{", ".join(EXPERIMENTS)}', file=sys.stderr)
    return 2
  if not replica_counts or not all(1 <= n <= MAX_REPLICAS
                                   for n in replica_counts):
    print(f'error: --replicas={args.replicas!r}; use counts in 1..'
          f'{MAX_REPLICAS}', file=sys.stderr)
    return 2
  ici = Interconnect(args.ici_gbit_s / 8 * 1e9 / 2, args.hop_latency_us * 1e-6,
                     args.collective_overhead_us * 1e-6)
  start = time.perf_counter()
  print(f'Table 1 report: measuring {", ".join(models)} on '
        f'{", ".join(map(str, replica_counts))} logical CPU replicas',
        flush=True)
  measured = [measure(m, args, replica_counts) for m in models]
  print_measured(measured, args)
  print_projection(measured, ici)
  print_cost(measured, ici)
  print('\nMeasured here: the CPU compute and all-reduce times, gradient '
        'bytes, BN channels. Projected: every TPU-v3 figure except the '
        f'{CALIBRATION_CORES}-core images/ms, which is the paper\'s (the '
        'calibration). Paper: Table 1 as published.')
  print(f'total {time.perf_counter() - start:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
