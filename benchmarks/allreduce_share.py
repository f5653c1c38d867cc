r"""Share of the training-step time spent in the gradient all-reduce.

Builds the real task, model, optimizer and train metrics of a registered
experiment (`--experiment`, plus `--gin_params` / `--params_override` parsed
exactly as train.py does) under a tf.distribute strategy, feeds every replica
a fixed synthetic batch of the experiment's input shape and dtype (so the
input pipeline is excluded), and times, interleaved over `--rounds` rounds of
`--steps` calls each (the order rotates between rounds; medians reported):

  full      the training step Model Garden's trainer runs: `strategy.run` of
            the task's `train_step` (forward, loss, backward, the optimizer's
            gradient all-reduce, LARS/RMSProp (+EMA) update, train metrics)
            in a tf.function;
  allreduce the gradient all-reduce alone: `strategy.run` in a tf.function of
            the optimizer's own aggregation function
            (`optimizer.gradient_aggregator`, i.e. tf_keras'
            `all_reduce_sum_gradients`: `ReplicaContext.all_reduce(SUM)`, or
            on strategies that need it `merge_call` ->
            `extended.batch_reduce_to(SUM, grads_and_vars)` with the model's
            variables as destinations) applied to per-replica random tensors
            with exactly the shapes and dtypes of the model's trainable
            variables, i.e. the same reduction, same cross-device ops and same
            destinations as inside `full`;
  floor     the same tf.function call with `tf.identity` instead of the
            reduction: the cost of calling a function on as many per-replica
            tensors and returning them, which `allreduce` includes;
  no-reduce (unless --no_differential) `full` with a second optimizer whose
            `gradient_aggregator` is the identity (what
            `apply_gradients(experimental_aggregate_gradients=False)` does):
            every replica applies its local gradients.

Reported: median time per step of each; the gradient bytes each replica
contributes per step; the effective all-reduce bandwidth (bytes / allreduce
time, "algorithm bandwidth"); and three estimates of the all-reduce share of a
step:
  isolated      allreduce / full;
  net of floor  (allreduce - floor) / full;
  differential  (full - no-reduce) / full.

Why these are estimates, not a trace attribution:
  * Timing the reduction on its own cannot see overlap. Inside a real step
    the all-reduce of late layers' gradients may run while earlier layers'
    backward still computes (GPU streams, TPU XLA scheduling), so the
    exposed cost can be smaller than `isolated`; conversely contention with
    concurrent compute can make it larger. `differential` captures the
    exposed cost but also drops the synchronization point between replicas,
    and it is the difference of two noisy medians (it can come out negative
    when the all-reduce is cheap).
  * On `--strategy cpu` the "devices" are logical devices splitting one CPU
    (runtime.configure_logical_cpus): all replicas share the same cores and
    memory, and the all-reduce (ReductionToOneDevice: add_n on one device,
    then copies to every replica) is a memory copy + add, not a network or
    interconnect transfer. The share measured there says how much of a CPU
    step the reduction costs, not what it costs on a TPU slice or GPU host.
  * Batch-norm cross-replica reductions (grouped/synced BN) are part of
    `full` and of `no-reduce`, never counted as gradient all-reduce.

On a real multi-device machine run it with `--strategy mirrored` (all local
GPUs, or `--replicas N`; Model Garden's
`distribute_utils.get_distribution_strategy` with the experiment's
runtime.all_reduce_alg) or `--strategy tpu --tpu ADDRESS` (TPUStrategy; the
replicas are the TPU's cores). The same three measurements then time the
strategy's real collective (NCCL, TPU all-reduce).

For an honest look at the overlap, `--profile_dir DIR` also records a real
`tf.profiler.experimental` trace of `--profile_steps` full steps and as many
isolated all-reduces (step markers `train` and `allreduce`) into DIR:
  tensorboard --logdir DIR        (Profile tab: trace viewer, op stats)

Examples:
  python benchmarks/allreduce_share.py                     # digits demo, 4 CPUs
  python benchmarks/allreduce_share.py --replicas 4 --per_replica_batch 32 \
      --steps 3 --rounds 7 --warmup 2
  python benchmarks/allreduce_share.py --image_size 224 --per_replica_batch 4 \
      --params_override task.model.num_classes=1000 --steps 2 --rounds 5
  python benchmarks/allreduce_share.py --experiment effnet_b2_lars_16k \
      --strategy tpu --tpu my-tpu --profile_dir /tmp/allreduce_profile

Measured (2-core host shared with other jobs, load average 4-7; tf 2.20,
float32, effnet_b0_digits = B0 + EMA(PaperLARS), 4 logical CPU replicas,
ReductionToOneDevice; 213 gradient tensors):
  32x32, 32 images/replica (the demo), 7 rounds x 3 steps: full 1057 ms
    (644 ms CPU), allreduce 36.5 ms, floor 14.1 ms, 15.3 MiB/replica,
    0.44 GB/s; share isolated 0.035 (per round 0.028-0.088), net of floor
    0.021, CPU-time isolated 0.030; differential -0.08 (per round -1.1 to
    +0.37: noise).
  224x224, 4 images/replica, 1000 classes, 7 rounds x 2 steps: full 2170 ms
    (1741 ms CPU), allreduce 49.2 ms, floor 25.6 ms, 20.2 MiB/replica,
    0.43 GB/s; share isolated 0.023 (per round 0.009-0.060), net of floor
    0.011; from CPU time isolated 0.016, differential 0.038; wall-clock
    differential -0.24 (an earlier 5-round run: +0.39; per-round ranges
    span -0.8 to +0.5).
  So on this host the all-reduce costs about 1-3.5% of a step; the wall-clock
  differential is swamped by other jobs' load and is only meaningful on a
  quiet machine (or read its CPU-time variant).

User errors (unknown experiment, bad replica count, a bad override) print one
`error: ...` line and exit with status 2.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tf_keras

from benchmarks import interleaved
from official.common import distribute_utils
from official.core import task_factory
from official.modeling import optimization
from official.modeling import performance

import experiments  # pylint: disable=unused-import  (registers experiments)
from official_ext.core import config_overrides
from official_ext.core import recipe
from official_ext.core import runtime

STRATEGIES = ('cpu', 'mirrored', 'tpu')
ConfigError = config_overrides.ConfigError


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--experiment', default='effnet_b0_digits',
                      help='registered experiment (default %(default)s)')
  parser.add_argument('--gin_params', action='append', default=[],
                      help='gin binding, as train.py (repeatable)')
  parser.add_argument('--params_override', default='',
                      help='as train.py: YAML string/file or "a.b=1,c.d=x"')
  parser.add_argument('--strategy', choices=STRATEGIES, default='cpu',
                      help='cpu: MirroredStrategy over --replicas logical CPU '
                      'devices (default); mirrored: local GPUs; tpu: '
                      'TPUStrategy on --tpu')
  parser.add_argument('--tpu', default=None,
                      help='TPU name or address (--strategy tpu)')
  parser.add_argument('--replicas', type=int, default=None,
                      help='replicas: logical CPUs (default 4) or GPUs '
                      '(default all); ignored for tpu')
  parser.add_argument('--image_size', type=int, default=None,
                      help="square input size (default: the experiment's)")
  parser.add_argument('--per_replica_batch', type=int, default=None,
                      help="default: the experiment's global batch / its "
                      'replica count (runtime.num_cpu_replicas, tpu_cores or '
                      'num_gpus; 32 or 64 for the Table 2 rows), else / '
                      'the replicas')
  parser.add_argument('--steps', type=int, default=3,
                      help='timed calls per measurement per round')
  parser.add_argument('--rounds', type=int, default=7,
                      help='interleaved rounds; medians are reported')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed calls per measurement after tracing')
  parser.add_argument('--no_differential', action='store_true',
                      help='skip the no-reduce step (saves one trace)')
  parser.add_argument('--profile_dir', default=None,
                      help='also write a tf.profiler trace of full steps and '
                      'isolated all-reduces here (tensorboard --logdir DIR)')
  parser.add_argument('--profile_steps', type=int, default=3,
                      help='steps of each kind in the --profile_dir trace')
  return parser.parse_args(argv)


def check_args(args):
  for name in ('steps', 'rounds', 'profile_steps'):
    if getattr(args, name) < 1:
      raise ConfigError(f'--{name}={getattr(args, name)} must be >= 1')
  if args.warmup < 0:
    raise ConfigError(f'--warmup={args.warmup} must be >= 0')
  if args.replicas is not None and args.replicas < 1:
    raise ConfigError(f'--replicas={args.replicas} must be >= 1')
  if args.strategy == 'cpu':
    cpus = os.cpu_count() or 1
    if args.replicas is not None and args.replicas > 64 * cpus:
      raise ConfigError(f'--replicas={args.replicas} is more than 64 logical '
                        f'devices per core ({cpus} cores)')
  if args.strategy == 'tpu' and not args.tpu:
    raise ConfigError('--strategy tpu needs --tpu (name or address)')
  if args.image_size is not None and args.image_size < 8:
    raise ConfigError(f'--image_size={args.image_size} must be >= 8')
  if args.per_replica_batch is not None and args.per_replica_batch < 1:
    raise ConfigError(
        f'--per_replica_batch={args.per_replica_batch} must be >= 1')


def build_strategy(args, params):
  """The strategy; runtime.configure_logical_cpus already ran for cpu."""
  if args.strategy == 'cpu':
    return runtime.mirrored_cpu_strategy(args.replicas)
  if args.strategy == 'mirrored':
    gpus = len(tf.config.list_physical_devices('GPU'))
    if gpus == 0:
      raise ConfigError('--strategy mirrored: no GPU visible')
    num = args.replicas or gpus
    if num > gpus:
      raise ConfigError(f'--replicas={num} but only {gpus} GPUs are visible')
    return distribute_utils.get_distribution_strategy(
        distribution_strategy='mirrored', num_gpus=num,
        all_reduce_alg=params.runtime.all_reduce_alg)
  return distribute_utils.get_distribution_strategy(
      distribution_strategy='tpu', tpu_address=args.tpu)


def benchmark_params(args, params, num_replicas):
  """Params for this run: replicas, global batch and image size set."""
  per_replica = args.per_replica_batch
  if per_replica is None:
    expected = (recipe.expected_replicas(params) or params.runtime.tpu_cores
                or num_replicas)
    per_replica = max(1, params.task.train_data.global_batch_size // expected)
  size = args.image_size or params.task.model.input_size[0]
  rt = {'num_cpu_replicas': num_replicas if args.strategy == 'cpu' else 0}
  if args.strategy == 'cpu':
    rt.update(distribution_strategy='mirrored', device_mesh=[], tpu_cores=0)
  elif args.strategy == 'mirrored':
    rt.update(distribution_strategy='mirrored', num_gpus=num_replicas)
  else:
    rt.update(distribution_strategy='tpu', tpu=args.tpu,
              tpu_cores=num_replicas)
  override = {
      'runtime': rt,
      'task': {'model': {'input_size': [size, size, 3]},
               'train_data': {'global_batch_size': per_replica * num_replicas}},
  }
  try:
    params.override(override, is_strict=True)
    recipe.resolve(params)
    params.validate()
  except (KeyError, AttributeError, TypeError, ValueError,
          AssertionError) as e:
    raise ConfigError(f'with {num_replicas} replicas x {per_replica} '
                      f'images of {size}px: {e}') from e
  return params, per_replica, size


def base_optimizer(optimizer):
  """The innermost optimizer under EMA / loss-scale wrappers."""
  while True:
    inner = getattr(optimizer, '_optimizer', None)
    if inner is None or inner is optimizer:
      return optimizer
    optimizer = inner


def maybe_shadow_copy(optimizer, model):
  """EMA averages need their shadow variables, as Model Garden's Trainer."""
  if (isinstance(optimizer, optimization.ExponentialMovingAverage)
      and not optimizer.has_shadow_copy):
    optimizer.shadow_copy(model)


def per_replica_values(strategy, make):
  """Distributed values: `make(replica_id)` built on each replica's device."""
  devices = strategy.extended.worker_devices

  def value_fn(ctx):
    replica = ctx.replica_id_in_sync_group
    with tf.device(devices[replica % len(devices)]):
      return make(replica)

  return strategy.experimental_distribute_values_from_function(value_fn)


def sync(outputs, strategy):
  """Waits for `outputs` by fetching the smallest tensor of each replica."""
  flat = [t for t in tf.nest.flatten(outputs)]
  smallest = min(flat, key=lambda t: (
      strategy.experimental_local_results(t)[0].shape.num_elements()))
  for t in strategy.experimental_local_results(smallest):
    t.numpy()


REDUCE_OP_TYPES = ('AddN', 'CollectiveReduceV2', 'CollectiveReduceV3',
                   'CollectiveReduce', 'NcclAllReduce', 'CrossReplicaSum')


def op_counts(fn):
  """Ops of the reduction kinds in `fn`'s traced graph (incl. functions)."""
  graph = fn.get_concrete_function().graph
  ops = [op.type for op in graph.get_operations()]
  for f in graph.as_graph_def().library.function:
    ops.extend(node.op for node in f.node_def)
  return sum(op in REDUCE_OP_TYPES for op in ops)


def profile(fns, strategy, profile_dir, steps):
  tf.profiler.experimental.start(profile_dir)
  try:
    for name in ('full', 'allreduce'):
      for i in range(steps):
        with tf.profiler.experimental.Trace(
            'train' if name == 'full' else 'allreduce', step_num=i, _r=1):
          sync(fns[name](), strategy)
  finally:
    tf.profiler.experimental.stop()


def main(argv=None):
  args = parse_args(argv)
  try:
    check_args(args)
    params = config_overrides.parse_configuration(
        args.experiment, gin_params=args.gin_params,
        tpu=args.tpu if args.strategy == 'tpu' else None,
        params_override=args.params_override, lock=False)
    if args.strategy == 'cpu':
      args.replicas = args.replicas or 4
      runtime.configure_logical_cpus(args.replicas)
    strategy = build_strategy(args, params)
    num_replicas = strategy.num_replicas_in_sync
    params, per_replica, size = benchmark_params(args, params, num_replicas)
  except (ConfigError, RuntimeError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  params.lock()

  precision = params.runtime.mixed_precision_dtype
  if precision in ('bfloat16', 'float16'):
    performance.set_mixed_precision_policy(precision)

  start = time.perf_counter()
  with strategy.scope():
    task = task_factory.get_task(params.task)
    model = task.build_model()
    optimizer = task.create_optimizer(params.trainer.optimizer_config,
                                      params.runtime)
    metrics = task.build_metrics(training=True)
    maybe_shadow_copy(optimizer, model)
    reduce_optimizer = base_optimizer(optimizer)
    aggregator = getattr(reduce_optimizer, 'gradient_aggregator', None)
    differential = not args.no_differential and aggregator is not None
    if differential:
      local_optimizer = task.create_optimizer(
          params.trainer.optimizer_config, params.runtime)
      base_optimizer(local_optimizer).gradient_aggregator = lambda gv: gv
      maybe_shadow_copy(local_optimizer, model)
      local_metrics = task.build_metrics(training=True)
  variables = model.trainable_variables
  if aggregator is None:  # not a legacy optimizer: reduce as tf_keras does
    def aggregator(grads_and_vars):
      grads = [g for g, _ in grads_and_vars]
      reduced = tf.distribute.get_replica_context().all_reduce(
          tf.distribute.ReduceOp.SUM, grads)
      return list(zip(reduced, [v for _, v in grads_and_vars]))

  num_params = sum(v.shape.num_elements() for v in variables)
  grad_bytes = sum(v.shape.num_elements() * v.dtype.size for v in variables)
  image_dtype = tf.as_dtype(getattr(params.task.train_data, 'dtype', None)
                            or 'float32')
  num_classes = params.task.model.num_classes
  cross_device = getattr(strategy.extended, '_cross_device_ops', None)
  backbone = params.task.model.backbone.get()
  print(f'{args.experiment}: {getattr(backbone, "model_id", "")} at '
        f'{size}x{size}, {num_params:,} trainable parameters in '
        f'{len(variables)} variables; {num_replicas} replicas '
        f'({args.strategy}: {type(strategy).__name__}'
        + (f', {type(cross_device).__name__}' if cross_device else '')
        + f') x {per_replica} images; optimizer {type(optimizer).__name__}'
        + (f'({type(reduce_optimizer).__name__})'
           if reduce_optimizer is not optimizer else '')
        + f'; precision {precision}; built in '
        f'{time.perf_counter() - start:.1f} s', flush=True)

  rng = np.random.default_rng(0)
  images = per_replica_values(strategy, lambda r: tf.constant(
      rng.uniform(-1, 1, [per_replica, size, size, 3]), image_dtype))
  labels = per_replica_values(strategy, lambda r: tf.constant(
      rng.integers(0, num_classes, [per_replica]), tf.int32))
  grads = per_replica_values(strategy, lambda r: [
      tf.constant(1e-3 * rng.standard_normal(v.shape.as_list()), v.dtype)
      for v in variables])

  # Every step function takes no arguments and closes over its fixed
  # per-replica inputs, so a call does not pay for flattening and matching
  # hundreds of distributed arguments (the captured tensors are fed directly).
  def make_train(opt, mets):
    @tf.function
    def train():
      return strategy.run(
          lambda x, y: task.train_step((x, y), model, opt, mets),
          args=(images, labels))
    return train

  @tf.function
  def allreduce():
    def replica_fn(grads):
      reduced = aggregator(list(zip(grads, variables)))
      return [g for g, _ in reduced]
    return strategy.run(replica_fn, args=(grads,))

  @tf.function
  def floor():
    return strategy.run(lambda g: [tf.identity(x) for x in g], args=(grads,))

  fns = {'full': make_train(optimizer, metrics),
         'allreduce': allreduce,
         'floor': floor}
  if differential:
    fns['no-reduce'] = make_train(local_optimizer, local_metrics)
  for name, fn in fns.items():
    start = time.perf_counter()
    sync(fn(), strategy)
    first = time.perf_counter() - start
    for _ in range(args.warmup):
      sync(fn(), strategy)
    print(f'  {name}: trace + first call {first:.1f} s', flush=True)
  # Sanity check that no-reduce really drops the reduction: with 2+ replicas
  # the reduce adds one AddN per gradient (ReductionToOneDevice) or one
  # collective/NCCL op per gradient or pack to the traced graph.
  counts = {name: op_counts(fn) for name, fn in fns.items()
            if name in ('full', 'no-reduce', 'allreduce')}
  print('reduction ops in the traced graphs (AddN / collective / NCCL / '
        'CrossReplicaSum): ' + ', '.join(
            f'{name} {count}' for name, count in counts.items()))

  wall, cpu = interleaved.time_interleaved(
      fns, args.steps, args.rounds, wait=lambda out: sync(out, strategy))
  med = {n: statistics.median(t) for n, t in wall.items()}
  med_cpu = {n: statistics.median(t) for n, t in cpu.items()}
  print(f'median / min wall time per call over {args.rounds} rounds of '
        f'{args.steps} calls (process CPU time in brackets; tf '
        f'{tf.__version__}, {os.cpu_count()} cores):')
  for name in fns:
    print(f'  {name:10s} {med[name] * 1e3:10.2f} / {min(wall[name]) * 1e3:10.2f}'
          f' ms   [{med_cpu[name] * 1e3:10.2f} ms CPU, '
          f'{med_cpu[name] / med[name]:4.2f} cores busy]')
  per_round = [a / f for a, f in zip(wall['allreduce'], wall['full'])]
  share = med['allreduce'] / med['full']
  net = (med['allreduce'] - med['floor']) / med['full']
  print(f'gradient bytes per replica per step: {grad_bytes:,} '
        f'({grad_bytes / 2**20:.1f} MiB, {len(variables)} tensors)')
  net_time = med['allreduce'] - med['floor']
  print(f'effective all-reduce bandwidth: '
        f'{grad_bytes / med["allreduce"] / 1e9:.2f} GB/s (bytes per replica '
        '/ allreduce time; net of floor: '
        + (f'{grad_bytes / net_time / 1e9:.2f} GB/s)' if net_time > 0 else
           'n/a, floor >= allreduce)'))
  print(f'all-reduce share of step time (isolated): {share:.4f} '
        f'(per-round {min(per_round):.4f}-{max(per_round):.4f})')
  print(f'all-reduce share of step time (net of floor): {net:.4f}')
  if differential:
    diff = (med['full'] - med['no-reduce']) / med['full']
    per_round = [(f - n) / f for f, n in zip(wall['full'], wall['no-reduce'])]
    print(f'all-reduce share of step time (differential): {diff:.4f} '
          f'(per-round {min(per_round):.4f}-{max(per_round):.4f})')
  elif aggregator is not None and not args.no_differential:
    print('differential share: skipped (optimizer has no gradient_aggregator)')
  cpu_shares = [f'isolated {med_cpu["allreduce"] / med_cpu["full"]:.4f}']
  if differential:
    cpu_shares.append('differential '
                      f'{1 - med_cpu["no-reduce"] / med_cpu["full"]:.4f}')
  print('same from process CPU time (less sensitive to other jobs on the '
        f'host, but counts every core): {", ".join(cpu_shares)}')
  if args.strategy == 'cpu':
    print('note: logical CPU devices share the same cores and memory; the '
          'all-reduce here is a memory copy + add, not a network transfer')

  if args.profile_dir:
    profile(fns, strategy, args.profile_dir, args.profile_steps)
    print(f'profile of {args.profile_steps} full steps (marker "train") and '
          f'{args.profile_steps} all-reduces (marker "allreduce") in '
          f'{args.profile_dir}: tensorboard --logdir {args.profile_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
