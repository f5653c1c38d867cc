"""Training-step cost of the paper's EfficientNet machinery.

Parts (`--part`):
  backbone  one device: training-step throughput (images/s; tf.function,
            float32, no XLA) of official_ext's paper EfficientNet vs Model
            Garden's `EfficientNet(model_id, se_ratio=0.25, activation='swish',
            se_inner_activation='swish', stochastic_depth_drop_rate=0.2,
            norm_momentum=0.99, norm_epsilon=1e-3)` (the reference's swish
            inside squeeze-excite too, so both step graphs hold the same
            ops), both behind the same Model Garden
            `ClassificationModel` head (global pool, dropout, 1000-way Dense),
            trained with momentum SGD on the same fixed random batch. The
            measurements are interleaved: every round times `--steps` steps of
            each model, in an order that rotates between rounds; medians are
            reported. Target: ours >= 0.95x Model Garden's.
  bn        batch-norm variants on `--num-replicas` (8) logical CPU replicas
            under MirroredStrategy (`runtime.mirrored_cpu_strategy`):
            training-step throughput (global images/s; a tf.function step
            doing `strategy.run` of forward + loss + GradientTape + momentum
            SGD apply; float32, no XLA) of official_ext's EfficientNet
            (`--model-id`, paper defaults) + `ClassificationModel` head
            (pool, dropout, 1000-way Dense) with its norm layer injected:
              local     tf_keras BatchNormalization(fused=True), per replica;
              groupedG  GroupedBatchNormalization(group_size=G), G from
                        `--group-sizes` (2,4), through
                        `norm_layer_factory.make_norm_layer_factory` (contiguous groups);
              sync      tf_keras BatchNormalization(synchronized=True), all
                        replicas.
            Small images and per-replica batches (`--bn-image-size` 32,
            `--bn-batch-per-replica` 4) keep a step short on a 2-core host.
            Every configuration runs in its own subprocess (TF must be split
            into logical CPUs before it initializes); all its models and step
            functions are built and traced first (trace = Python tracing of
            the step, `get_concrete_function`; first step = the first call:
            graph optimization + first run), then timed interleaved like
            `backbone`. Target: grouped2 >= sync.
            tf_keras synchronized BN traces super-linearly in depth under
            MirroredStrategy (`ReplicaContext.all_reduce` wraps a graph-mode
            custom_gradient that walks every replica's graph, per BN layer,
            forward and backward), so the sync variant is traced first and
            the subprocess is killed when its trace + first step exceed
            `--sync-trace-budget-s` (240 s); the configuration is then rerun
            without it. With `--reduced auto` (default) a reduced-depth
            configuration follows in that case: the same EfficientNet code
            with its stage table cut to the first `--reduced-stages` (3)
            stages of one block each (stem, MBConv1 k3 32->16, MBConv6 k3 s2
            16->24, MBConv6 k5 s2 24->40, head: 10 norm layers), where all
            four variants are measured. The printout says which
            configuration each figure belongs to.
            Measured (2-core host shared with other jobs; 8 replicas, 32x32,
            batch 4 per replica): B0 with sync BN had not finished trace +
            first step after 16 min (killed); trace alone 104-156 s with 3
            one-block stages (10 norm layers), 186 s with 4 (13). B0 trace
            + first step: local 21 + 26 s, grouped2 56 + 92 s, grouped4
            87 + 87 s. Steady state is within noise: B0 local 41.9,
            grouped2 40.6, grouped4 42.7 images/s; 3-stage model local 256,
            grouped2 258, grouped4 262, sync 248 images/s (grouped2/sync
            1.04, per-round median 0.98). Default `--part bn`: ~18 min.
  all       every implemented part.

  python benchmarks/bn_overhead.py --part backbone --image-size 128 \
      --batch-size 16 --steps 2 --rounds 15
  python benchmarks/bn_overhead.py --part bn --num-replicas 8 \
      --bn-image-size 32 --bn-batch-per-replica 4 --steps 2 --rounds 15 \
      --sync-trace-budget-s 240 --reduced auto --reduced-stages 3
"""
import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import types

import numpy as np
import tensorflow as tf
import tf_keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import interleaved  # pylint: disable=g-import-not-at-top
from official.vision.modeling import classification_model
from official.vision.modeling.backbones import efficientnet as mg_efficientnet
from official_ext.core import runtime
from official_ext.modeling.backbones import efficientnet
from official_ext.modeling.layers import norm_layer_factory


HEAVY_OPS = ('Conv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter',
             'DepthwiseConv2dNative', 'FusedBatchNormV3', 'MatMul')


def build_classifier(backbone, input_specs, dropout_rate):
  return classification_model.ClassificationModel(
      backbone, 1000, input_specs=input_specs, dropout_rate=dropout_rate)


def make_train_step(model):
  """A tf.function SGD(momentum) step on (images, labels); returns the loss."""
  optimizer = tf_keras.optimizers.legacy.SGD(learning_rate=1e-3, momentum=0.9)
  loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function(jit_compile=False)
  def step(images, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  return step


def run_interleaved(steps, inputs, num_steps, warmup, rounds):
  """Times `steps` (name -> fn) interleaved.

  Returns (wall, cpu): name -> [seconds per step] per round, wall-clock and
  process CPU time (all threads; less sensitive to other processes sharing
  the machine than wall-clock time).
  """
  for name, step in steps.items():
    for _ in range(warmup + 1):  # +1: tracing
      step(*inputs).numpy()
  return time_rounds(steps, inputs, num_steps, rounds)


def time_rounds(steps, inputs, num_steps, rounds):
  """Times already traced and warmed-up `steps`; as `run_interleaved`."""
  return interleaved.time_interleaved(
      {name: functools.partial(step, *inputs) for name, step in steps.items()},
      num_steps, rounds, wait=lambda loss: loss.numpy())


def run_backbone(args):
  """Part 2: throughput of our backbone vs Model Garden's, one device."""
  tf_keras.mixed_precision.set_global_policy('float32')
  tf.config.optimizer.set_jit(False)
  size, batch = args.image_size, args.batch_size
  input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
  dropout = efficientnet.SCALING[args.model_id].dropout_rate
  builders = {
      'official_ext (paper)': lambda: efficientnet.EfficientNet(
          args.model_id, input_specs=input_specs, se_ratio=0.25,
          stochastic_depth_drop_rate=0.2, activation='swish',
          norm_momentum=0.99, norm_epsilon=1e-3),
      'Model Garden': lambda: mg_efficientnet.EfficientNet(
          model_id=args.model_id, input_specs=input_specs, se_ratio=0.25,
          activation='swish', se_inner_activation='swish',
          stochastic_depth_drop_rate=0.2, norm_momentum=0.99,
          norm_epsilon=1e-3),
  }
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(size=[batch, size, size, 3]), tf.float32)
  labels = tf.constant(rng.integers(0, 1000, size=[batch]), tf.int32)

  steps = {}
  with tf.device('/CPU:0'):
    for name, build in builders.items():
      model = build_classifier(build(), input_specs, dropout)
      params = sum(v.shape.num_elements() for v in model.trainable_variables)
      print(f'{name:22s} EfficientNet-{args.model_id.upper()} + head: '
            f'{params:,} trainable parameters')
      steps[name] = make_train_step(model)
    times, cpu_times = run_interleaved(
        steps, (images, labels), args.steps, args.warmup, args.rounds)

  # The two step graphs should run the same heavy ops.
  print('ops in the traced training step (forward + backward):')
  for name, step in steps.items():
    graph = step.get_concrete_function(images, labels).graph
    counts = collections.Counter(op.type for op in graph.get_operations())
    heavy = ', '.join(f'{op} {counts[op]}' for op in HEAVY_OPS)
    print(f'  {name:22s} {sum(counts.values())} total; {heavy}')

  print(f'training step, {args.model_id.upper()} {size}x{size}, batch {batch}, '
        f'float32, no XLA (median / min over {args.rounds} rounds of '
        f'{args.steps} steps; tf {tf.__version__}, {os.cpu_count()} CPUs):')
  ips = {}
  for name, t in times.items():
    med = statistics.median(t)
    ips[name] = batch / med
    print(f'  {name:22s} {med * 1e3:8.1f} ms/step (best {min(t) * 1e3:6.1f})'
          f'  {ips[name]:6.1f} images/s   CPU '
          f'{statistics.median(cpu_times[name]) * 1e3:8.1f} ms/step')
  ours_name, mg_name = 'official_ext (paper)', 'Model Garden'
  ours, mg = times[ours_name], times[mg_name]
  ratio = ips[ours_name] / ips[mg_name]
  ratios = sorted(m / o for o, m in zip(ours, mg))
  cpu_ratio = (statistics.median(cpu_times[mg_name]) /
               statistics.median(cpu_times[ours_name]))
  print(f'throughput ratio ours / Model Garden (target >= 0.95): '
        f'{ratio:.3f} median of medians, '
        f'{statistics.median(ratios):.3f} median of per-round ratios '
        f'(range {ratios[0]:.3f}-{ratios[-1]:.3f}), '
        f'{min(mg) / min(ours):.3f} ratio of best rounds, '
        f'{cpu_ratio:.3f} by CPU time')
  return ratio


BN_EVENT = '@@bn_overhead '  # Prefix of a worker's JSON event lines.


def bn_variants(group_sizes):
  return ['local'] + [f'grouped{g}' for g in group_sizes] + ['sync']


def bn_norm_factory(variant):
  """The norm-layer factory of a variant; call under the strategy's scope."""
  if variant == 'local':
    return lambda **kwargs: tf_keras.layers.BatchNormalization(
        fused=True, **kwargs)
  if variant == 'sync':
    config = types.SimpleNamespace(use_sync_bn=True, bn_group_size=1)
  else:
    config = types.SimpleNamespace(
        use_sync_bn=False, bn_group_size=int(variant[len('grouped'):]),
        device_mesh=())
  return norm_layer_factory.make_norm_layer_factory(config)


def describe_norm_layers(model):
  """E.g. '49 x GroupedBatchNormalization(group_size=2, fused=False)'."""
  counts = collections.Counter()
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      desc = [f'fused={layer.fused}']
      if getattr(layer, 'synchronized', False):
        desc.insert(0, 'synchronized=True')
      if hasattr(layer, 'group_size'):
        desc.insert(0, f'group_size={layer.group_size}')
      counts[f'{type(layer).__name__}({", ".join(desc)})'] += 1
  return '; '.join(f'{n} x {d}' for d, n in sorted(counts.items()))


@contextlib.contextmanager
def stage_table(num_stages):
  """EfficientNet's stage table cut to `num_stages` stages of one block.

  None: the full table. Patches `efficientnet.B0_BLOCKS`, which
  `EfficientNet.__init__` reads (widths, strides, kernels, expansion and the
  block code are unchanged; depth scaling of the model id still applies).
  """
  full = efficientnet.B0_BLOCKS
  if num_stages is not None:
    efficientnet.B0_BLOCKS = tuple(
        dataclasses.replace(b, repeats=1) for b in full[:num_stages])
  try:
    yield
  finally:
    efficientnet.B0_BLOCKS = full


def make_distributed_train_step(strategy, model, optimizer, global_batch):
  """tf.function: strategy.run(forward, loss, gradient, SGD apply)."""
  loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(
      from_logits=True, reduction=tf_keras.losses.Reduction.NONE)

  def replica_step(images, labels):
    with tf.GradientTape() as tape:
      per_example = loss_fn(labels, model(images, training=True))
      loss = tf.nn.compute_average_loss(per_example,
                                        global_batch_size=global_batch)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  @tf.function(jit_compile=False)
  def step(images, labels):
    losses = strategy.run(replica_step, args=(images, labels))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

  return step


def _emit(event, **fields):
  print(BN_EVENT + json.dumps(dict(event=event, **fields)), flush=True)


def bn_worker(spec):
  """One configuration of part bn, in its own process (see run_bn)."""
  num_replicas = spec['num_replicas']
  runtime.configure_logical_cpus(num_replicas)  # Before TF initializes.
  tf_keras.mixed_precision.set_global_policy('float32')
  tf.config.optimizer.set_jit(False)
  strategy = runtime.mirrored_cpu_strategy(num_replicas)
  assert strategy.num_replicas_in_sync == num_replicas
  size, batch = spec['image_size'], spec['batch_per_replica']
  global_batch = batch * num_replicas
  input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
  rng = np.random.default_rng(0)
  images = rng.uniform(size=[num_replicas, batch, size, size, 3]).astype(
      np.float32)
  labels = rng.integers(0, 1000, size=[num_replicas, batch]).astype(np.int32)
  inputs = tuple(
      strategy.experimental_distribute_values_from_function(
          lambda ctx, a=array: tf.constant(a[ctx.replica_id_in_sync_group]))
      for array in (images, labels))
  dropout = efficientnet.SCALING[spec['model_id']].dropout_rate

  steps = {}
  for variant in spec['variants']:
    start = time.perf_counter()
    with stage_table(spec['stages']), strategy.scope():
      backbone = efficientnet.EfficientNet(
          spec['model_id'], input_specs=input_specs,
          norm_layer_factory=bn_norm_factory(variant))
      model = build_classifier(backbone, input_specs, dropout)
      # Slots created now, not on the first call: a tf.function that creates
      # variables is traced twice.
      optimizer = tf_keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9,
                                          jit_compile=False)
      optimizer.build(model.trainable_variables)
    step = make_distributed_train_step(strategy, model, optimizer,
                                       global_batch)
    build_s = time.perf_counter() - start
    _emit('trace_start', variant=variant)
    start = time.perf_counter()
    step.get_concrete_function(*inputs)
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    loss = float(step(*inputs).numpy())
    first_s = time.perf_counter() - start
    assert step.experimental_get_tracing_count() == 1, 'step retraced'
    _emit('traced', variant=variant, build_s=build_s, trace_s=trace_s,
          first_step_s=first_s, loss=loss, num_blocks=backbone.num_blocks,
          params=sum(v.shape.num_elements()
                     for v in model.trainable_variables),
          norm_layers=describe_norm_layers(model))
    steps[variant] = step

  for step in steps.values():
    for _ in range(spec['warmup']):
      step(*inputs).numpy()
  wall, cpu = time_rounds(steps, inputs, spec['steps'], spec['rounds'])
  _emit('result', wall=wall, cpu=cpu)


def run_bn_config(spec, budget_s):
  """Runs `bn_worker(spec)` in a subprocess; returns (traced, result).

  The subprocess is killed if the 'sync' variant's trace (from its start to
  its first step's end) takes more than `budget_s` seconds (<= 0: no limit);
  `result` is then None and `traced['sync']` holds the time it ran.
  """
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), '--bn-worker',
       json.dumps(spec)], stdout=subprocess.PIPE, text=True, env=env)
  lines = queue.Queue()

  def pump():
    for line in proc.stdout:
      lines.put(line)
    lines.put(None)

  threading.Thread(target=pump, daemon=True).start()
  traced, result, deadline, sync_start = {}, None, None, None
  while True:
    timeout = None if deadline is None else max(0.0,
                                                deadline - time.monotonic())
    try:
      line = lines.get(timeout=timeout)
    except queue.Empty:
      proc.kill()  # The subprocess started above.
      proc.wait()
      elapsed = time.monotonic() - sync_start
      traced['sync'] = dict(killed=True, elapsed_s=elapsed)
      print(f'    sync: trace + first step NOT finished after {elapsed:.0f} s '
            f'(budget {budget_s:g} s); worker killed', flush=True)
      return traced, None
    if line is None:
      break
    if not line.startswith(BN_EVENT):
      print(line, end='')
      continue
    event = json.loads(line[len(BN_EVENT):])
    if event['event'] == 'trace_start':
      print(f'    {event["variant"]}: tracing ...', flush=True)
      if event['variant'] == 'sync':
        sync_start = time.monotonic()
        if budget_s > 0:
          deadline = sync_start + budget_s
    elif event['event'] == 'traced':
      deadline = None
      traced[event['variant']] = event
      print(f'    {event["variant"]}: build {event["build_s"]:.1f} s, trace '
            f'{event["trace_s"]:.1f} s, first step {event["first_step_s"]:.1f}'
            f' s; {event["norm_layers"]}', flush=True)
    elif event['event'] == 'result':
      result = event
  if proc.wait() != 0 or result is None:
    raise RuntimeError(f'bn worker failed (exit code {proc.returncode}) on '
                       f'{spec}')
  return traced, result


def report_bn_config(title, spec, traced, result, sync_note):
  """Prints one configuration's trace times, throughputs and ratios."""
  global_batch = spec['batch_per_replica'] * spec['num_replicas']
  any_traced = next(iter(v for v in traced.values() if 'params' in v))
  print(f'{title}: {any_traced["num_blocks"]} MBConv blocks, '
        f'{any_traced["params"]:,} trainable parameters; '
        f'{spec["num_replicas"]} replicas, {spec["image_size"]}x'
        f'{spec["image_size"]}, batch {spec["batch_per_replica"]} per replica '
        f'(global {global_batch}), float32, no XLA; median over '
        f'{spec["rounds"]} interleaved rounds of {spec["steps"]} steps')
  print(f'  {"variant":10s} {"trace s":>8s} {"1st step s":>10s} '
        f'{"ms/step":>9s} {"(best)":>8s} {"images/s":>9s} '
        f'{"CPU ms/step":>12s}')
  ips = {}
  wall = result['wall'] if result else {}
  for variant in bn_variants(spec['group_sizes']):
    t = traced.get(variant)
    if t is None:
      print(f'  {variant:10s} not run')
      continue
    if t.get('killed'):
      print(f'  {variant:10s} > {t["elapsed_s"]:.0f} s for trace + first '
            f'step (killed; {sync_note})')
      continue
    med = statistics.median(wall[variant])
    ips[variant] = global_batch / med
    print(f'  {variant:10s} {t["trace_s"]:8.1f} {t["first_step_s"]:10.1f} '
          f'{med * 1e3:9.1f} {min(wall[variant]) * 1e3:8.1f} '
          f'{ips[variant]:9.1f} '
          f'{statistics.median(result["cpu"][variant]) * 1e3:12.1f}')
  pairs = []
  for g in spec['group_sizes']:
    pairs += [(f'grouped{g}', 'sync'), (f'grouped{g}', 'local')]
  pairs.append(('sync', 'local'))
  ratios = {}
  for num, den in pairs:
    if num not in ips or den not in ips:
      continue
    per_round = sorted(d / n for n, d in zip(wall[num], wall[den]))
    cpu_ratio = (statistics.median(result['cpu'][den]) /
                 statistics.median(result['cpu'][num]))
    ratios[(num, den)] = ips[num] / ips[den]
    target = '  (target >= 1)' if (num, den) == ('grouped2', 'sync') else ''
    print(f'  {num}/{den} throughput: {ratios[(num, den)]:.3f} '
          f'(per-round median {statistics.median(per_round):.3f}, range '
          f'{per_round[0]:.3f}-{per_round[-1]:.3f}; by CPU time '
          f'{cpu_ratio:.3f}){target}')
  return ratios


def run_bn(args):
  """Part bn: local vs grouped vs synchronized BN on N logical CPUs."""
  group_sizes = [int(g) for g in args.group_sizes.split(',') if g]
  base = dict(model_id=args.model_id, num_replicas=args.num_replicas,
              image_size=args.bn_image_size,
              batch_per_replica=args.bn_batch_per_replica,
              group_sizes=group_sizes, steps=args.steps, warmup=args.warmup,
              rounds=args.rounds)
  budget = args.sync_trace_budget_s
  sync_note = f'--sync-trace-budget-s {budget:g}'
  full_name = f'EfficientNet-{args.model_id.upper()}'
  configs = [(full_name + ' (full depth)', None)]
  if args.reduced == 'always':
    configs.append(None)
  all_ratios = {}
  while configs:
    config = configs.pop(0)
    if config is None:
      config = (f'REDUCED-DEPTH {full_name}: first {args.reduced_stages} '
                'stages, 1 block each', args.reduced_stages)
    title, stages = config
    spec = dict(base, stages=stages)
    print(f'-- {title}', flush=True)
    variants = bn_variants(group_sizes)
    # sync first: if it is killed, little else is lost.
    spec['variants'] = ['sync'] + [v for v in variants if v != 'sync']
    traced, result = run_bn_config(spec, budget)
    if result is None:
      print('    rerunning without sync', flush=True)
      spec['variants'] = [v for v in variants if v != 'sync']
      rest, result = run_bn_config(spec, budget)
      traced.update(rest)
      if args.reduced == 'auto' and stages is None:
        configs.append(None)
    all_ratios[title] = report_bn_config(title, spec, traced, result,
                                         sync_note)
  print('summary (images/s ratios; target grouped2/sync >= 1):')
  for title, ratios in all_ratios.items():
    text = ', '.join(f'{n}/{d} {r:.3f}' for (n, d), r in ratios.items())
    print(f'  {title}: {text or "-"}')
  return all_ratios


PARTS = {'backbone': run_backbone, 'bn': run_bn}
IMPLEMENTED = ('backbone', 'bn')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--part', choices=['backbone', 'bn', 'all'],
                      default='all')
  parser.add_argument('--model-id', '--model_id', default='b0')
  parser.add_argument('--image-size', type=int, default=128)
  parser.add_argument('--batch-size', type=int, default=16)
  parser.add_argument('--steps', type=int, default=2,
                      help='timed steps per model per round')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed steps per model (after tracing)')
  parser.add_argument('--rounds', type=int, default=15,
                      help='interleaved rounds; medians are reported')
  bn = parser.add_argument_group('part bn')
  bn.add_argument('--num-replicas', '--num_replicas', type=int, default=8,
                  help='logical CPU replicas (MirroredStrategy)')
  bn.add_argument('--bn-image-size', '--bn_image_size', type=int, default=32)
  bn.add_argument('--bn-batch-per-replica', '--bn_batch_per_replica',
                  type=int, default=4)
  bn.add_argument('--group-sizes', '--group_sizes', default='2,4',
                  help='comma-separated grouped-BN group sizes')
  bn.add_argument('--sync-trace-budget-s', '--sync_trace_budget_s',
                  type=float, default=240,
                  help='seconds allowed for tracing + first step of the '
                  'synchronized-BN step of a configuration; past it the '
                  'variant is dropped (<= 0: no limit)')
  bn.add_argument('--reduced', choices=['auto', 'always', 'never'],
                  default='auto',
                  help='also measure a reduced-depth model: when the full '
                  "model's sync BN misses the budget (auto), always, never")
  bn.add_argument('--reduced-stages', '--reduced_stages', type=int,
                  default=3, choices=range(2, 8), metavar='{2..7}',
                  help='reduced depth: the first N stages, one block each '
                  '(stage 2 is the first feature level, so N >= 2)')
  parser.add_argument('--bn-worker', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.bn_worker:  # A part-bn subprocess (see run_bn_config).
    bn_worker(json.loads(args.bn_worker))
    return
  parts = IMPLEMENTED if args.part == 'all' else (args.part,)
  for part in parts:
    print(f'== part {part} ==')
    PARTS[part](args)


if __name__ == '__main__':
  main()
