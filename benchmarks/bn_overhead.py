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
  bn        grouped batch norm overhead (not implemented yet).
  all       every implemented part.

  python benchmarks/bn_overhead.py --part backbone --image-size 128 \
      --batch-size 16 --steps 2 --rounds 15
"""
import argparse
import collections
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf
import tf_keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from official.vision.modeling import classification_model  # pylint: disable=g-import-not-at-top
from official.vision.modeling.backbones import efficientnet as mg_efficientnet
from official_ext.modeling.backbones import efficientnet


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
  names = list(steps)
  wall = {name: [] for name in names}
  cpu = {name: [] for name in names}
  for r in range(rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      start, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(num_steps):
        loss = steps[name](*inputs)
      loss.numpy()  # wait for the last step
      wall[name].append((time.perf_counter() - start) / num_steps)
      cpu[name].append((time.process_time() - start_cpu) / num_steps)
  return wall, cpu


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


def run_bn(args):
  del args
  raise NotImplementedError('--part bn (grouped batch norm overhead) is not '
                            'implemented yet')


PARTS = {'backbone': run_backbone, 'bn': run_bn}
IMPLEMENTED = ('backbone',)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--part', choices=['backbone', 'bn', 'all'],
                      default='all')
  parser.add_argument('--model-id', default='b0')
  parser.add_argument('--image-size', type=int, default=128)
  parser.add_argument('--batch-size', type=int, default=16)
  parser.add_argument('--steps', type=int, default=2,
                      help='timed steps per model per round')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed steps per model (after tracing)')
  parser.add_argument('--rounds', type=int, default=15,
                      help='interleaved rounds; medians are reported')
  args = parser.parse_args()
  parts = IMPLEMENTED if args.part == 'all' else (args.part,)
  for part in parts:
    print(f'== part {part} ==')
    PARTS[part](args)


if __name__ == '__main__':
  main()
