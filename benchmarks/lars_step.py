"""Times one LARS `apply_gradients` on EfficientNet-B0's variables.

Compares `official_ext`'s PaperLARS with Model Garden's
`official.modeling.optimization.lars.LARS` (weight decay 1e-5, exclude lists =
the skip list), and plain momentum SGD as the floor (the fused momentum kernel
alone). Each optimizer updates its own copy of the B0 variables (Model
Garden's backbone, se_ratio 0.25, plus a 1000-way Dense head: ~5.3M
parameters) from fixed random gradients of the same shapes, passed as
`tf.function` arguments. The measurements are interleaved: every round times
`--steps` calls of each optimizer, in an order that rotates between rounds.

  python benchmarks/lars_step.py --steps 20 --warmup 5 --rounds 15
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf
import tf_keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from official.modeling.optimization import lars as mg_lars  # pylint: disable=g-import-not-at-top
from official.vision.modeling.backbones import efficientnet
from official_ext.modeling.optimization import configs
from official_ext.modeling.optimization import lars


def build_b0_variables():
  """EfficientNet-B0 backbone + 1000-way head; returns trainable variables."""
  backbone = efficientnet.EfficientNet(
      model_id='b0',
      input_specs=tf_keras.layers.InputSpec(shape=[None, 224, 224, 3]),
      se_ratio=0.25)
  inputs = tf_keras.Input((224, 224, 3))
  endpoints = backbone(inputs)
  x = endpoints[max(endpoints.keys())]
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  outputs = tf_keras.layers.Dense(1000)(x)
  return tf_keras.Model(inputs, outputs).trainable_variables


def make_step(optimizer, variables):
  @tf.function
  def step(grads):
    optimizer.apply_gradients(zip(grads, variables))
  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=20,
                      help='timed apply_gradients calls per optimizer per '
                      'round')
  parser.add_argument('--warmup', type=int, default=5,
                      help='untimed calls per optimizer (after tracing)')
  parser.add_argument('--rounds', type=int, default=15,
                      help='interleaved rounds; medians are reported')
  parser.add_argument('--no-sgd', action='store_true',
                      help='skip the plain momentum SGD floor')
  args = parser.parse_args()

  skip_list = list(configs.LARS_SKIP_LIST)
  lr, momentum, eeta, wd = 0.1, 0.9, 0.001, 1e-5
  optimizers = {
      'PaperLARS': lambda: lars.PaperLARS(
          learning_rate=lr, momentum=momentum, eeta=eeta, weight_decay=wd,
          epsilon=0.0, skip_list=skip_list),
      'ModelGardenLARS': lambda: mg_lars.LARS(
          learning_rate=lr, momentum=momentum, eeta=eeta,
          weight_decay_rate=wd, exclude_from_weight_decay=skip_list,
          exclude_from_layer_adaptation=skip_list),
  }
  if not args.no_sgd:
    optimizers['SGD(momentum) floor'] = lambda: (
        tf_keras.optimizers.legacy.SGD(learning_rate=lr, momentum=momentum))

  rng = np.random.default_rng(0)
  steps, grads = {}, None
  for name, make_optimizer in optimizers.items():
    variables = build_b0_variables()  # a fresh copy per optimizer
    if grads is None:
      grads = [tf.constant(1e-3 * rng.standard_normal(v.shape), v.dtype)
               for v in variables]
      num_params = sum(v.shape.num_elements() for v in variables)
      num_adapted = sum(not any(s in v.name for s in skip_list)
                        for v in variables)
      print(f'EfficientNet-B0 + head: {len(variables)} variables, '
            f'{num_params:,} parameters, {num_adapted} LARS-adapted')
    steps[name] = make_step(make_optimizer(), variables)

  for name, step in steps.items():
    for _ in range(args.warmup + 1):  # +1: tracing
      step(grads)

  names = list(steps)
  times = {name: [] for name in names}
  for r in range(args.rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      start = time.perf_counter()
      for _ in range(args.steps):
        steps[name](grads)
      times[name].append((time.perf_counter() - start) / args.steps * 1e3)

  print(f'per-step apply_gradients, ms (median / min over {args.rounds} '
        f'rounds of {args.steps} steps; tf {tf.__version__}, '
        f'{os.cpu_count()} CPUs):')
  med = {name: statistics.median(t) for name, t in times.items()}
  for name in names:
    print(f'  {name:22s} {med[name]:8.2f} / {min(times[name]):8.2f}')
  ratio = med['ModelGardenLARS'] / med['PaperLARS']
  ratios = [m / p for m, p in zip(times['ModelGardenLARS'],
                                  times['PaperLARS'])]
  print(f'ratio MG / PaperLARS: {ratio:.2f} (median of medians; per-round '
        f'range {min(ratios):.2f}-{max(ratios):.2f}; >= 1.0 means '
        'PaperLARS is not slower)')


if __name__ == '__main__':
  main()
