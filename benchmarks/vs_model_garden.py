r"""Training-step throughput: this project's task against Model Garden's stock.

  ours          the project's task (`official_ext` image classification) of a
                registered experiment (default effnet_b0_digits: the paper
                EfficientNet backbone, paper LARS with warmup and polynomial
                decay, EMA 0.9999 of the weights and BN statistics, label
                smoothing 0.1, weight decay 1e-5 in the loss), built by
                Model Garden's task factory; on this CPU host its 1x1
                convolutions run as matmuls (PointwiseConv2D) and its 5x5
                depthwise kernel gradients as depthwise convolutions
                (depthwise_kernel_gradient 'auto' -> 'folded');
  Model Garden  Model Garden's own `ImageClassificationTask` with its
                EfficientNet backbone (se_ratio 0.25, swish, stochastic depth
                0.2, BN momentum 0.99 / epsilon 1e-3, dropout as ours), its
                LARS (momentum 0.9, eeta 0.001, weight decay 1e-5, the same
                skip list), polynomial decay with linear warmup, its EMA
                0.9999, label smoothing 0.1, L2 1e-5 on the kernels.

Both at the same EfficientNet, image size, per-replica batch and float32, on
a fixed synthetic batch (the input pipeline is excluded), 1000 classes. Each
step is the task's `train_step` (forward, loss, backward, gradient
all-reduce, LARS + EMA update, train metrics) inside a tf.function
(`strategy.run` for replicas), as Model Garden's trainer runs it. Two
settings: one device (CPU:0, no strategy), and 4 logical CPU replicas under
MirroredStrategy (`runtime.mirrored_cpu_strategy`). Per setting: the first
call (trace + graph optimization + first step) of each, then `--warmup`
untimed steps, then `--rounds` rounds of `--steps` steps, alternating the
two in an order that rotates between rounds; medians reported, and the
throughput ratio ours / Model Garden's (> 1: ours is faster).

  python benchmarks/vs_model_garden.py              # ~5 min on 2 cores
  python benchmarks/vs_model_garden.py --settings 1 --rounds 3 --steps 2
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from official_ext.core import runtime  # pylint: disable=g-import-not-at-top

MAX_REPLICAS = 4
runtime.configure_logical_cpus(MAX_REPLICAS)

import numpy as np  # pylint: disable=g-import-not-at-top,g-bad-import-order
import tensorflow as tf

from benchmarks import allreduce_share
from benchmarks import interleaved
from official.core import task_factory
from official.modeling.optimization.configs import optimization_config
from official.vision.configs import backbones as mg_backbones
from official.vision.configs import common as mg_common
from official.vision.configs import image_classification as mg_configs
from official.vision.tasks import image_classification as mg_task

import experiments  # pylint: disable=unused-import  (registers experiments)
from official_ext.core import config_overrides
from official_ext.core import recipe
from official_ext.modeling.backbones import efficientnet
from official_ext.modeling.layers import depthwise_conv
from official_ext.modeling.optimization import configs as opt_configs

NUM_CLASSES = 1000
OURS, MODEL_GARDEN = 'ours', 'Model Garden'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--experiment', default='effnet_b0_digits',
                      help='our side: a registered experiment whose '
                      'optimizer is paper_lars (default %(default)s)')
  parser.add_argument('--depthwise_kernel_gradient', default='',
                      choices=['', 'auto', 'native', 'folded'],
                      help="our side's paper_efficientnet."
                      "depthwise_kernel_gradient (default: the experiment's)")
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--per_replica_batch', type=int, default=16)
  parser.add_argument('--settings', default='1,4',
                      help='replica counts to compare: 1 (one device, no '
                      f'strategy) and/or up to {MAX_REPLICAS} logical CPUs')
  parser.add_argument('--steps', type=int, default=3,
                      help='timed steps per task per round')
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--warmup', type=int, default=1)
  return parser.parse_args(argv)


def our_params(args, replicas: int):
  params = config_overrides.parse_configuration(args.experiment, lock=False)
  if params.trainer.optimizer_config.optimizer.type != 'paper_lars':
    raise config_overrides.ConfigError(
        f'--experiment={args.experiment} does not train with paper_lars')
  size = args.image_size
  params.override({
      'runtime': {'num_cpu_replicas': replicas,
                  'distribution_strategy': 'mirrored', 'tpu_cores': 0,
                  'device_mesh': [], 'mixed_precision_dtype': 'float32'},
      'task': {'model': {'num_classes': NUM_CLASSES,
                         'input_size': [size, size, 3]},
               'train_data': {'global_batch_size':
                              args.per_replica_batch * replicas,
                              'dtype': 'float32'}}}, is_strict=True)
  if args.depthwise_kernel_gradient:
    params.task.model.backbone.paper_efficientnet.depthwise_kernel_gradient = (
        args.depthwise_kernel_gradient)
  recipe.resolve(params)
  params.validate()
  params.lock()
  return params


def model_garden_task_config(ours) -> mg_configs.ImageClassificationTask:
  """Model Garden's stock task at our model, size and regularization."""
  model = ours.task.model
  backbone = model.backbone.get()
  return mg_configs.ImageClassificationTask(
      model=mg_configs.ImageClassificationModel(
          num_classes=NUM_CLASSES, input_size=list(model.input_size),
          backbone=mg_backbones.Backbone(
              type='efficientnet', efficientnet=mg_backbones.EfficientNet(
                  model_id=backbone.model_id, se_ratio=0.25,
                  stochastic_depth_drop_rate=0.2)),
          dropout_rate=efficientnet.SCALING[backbone.model_id].dropout_rate,
          norm_activation=mg_common.NormActivation(
              activation='swish', norm_momentum=0.99, norm_epsilon=1e-3,
              use_sync_bn=False)),
      losses=mg_configs.Losses(label_smoothing=0.1,
                               l2_weight_decay=ours.task.losses.weight_decay))


def model_garden_optimizer_config(
    ours) -> optimization_config.OptimizationConfig:
  """Model Garden's LARS + EMA, with our run's LR schedule and constants."""
  lars = ours.trainer.optimizer_config.optimizer.paper_lars
  schedule = ours.trainer.optimizer_config.learning_rate.get()
  warmup_steps = int(schedule.warmup_epochs * schedule.steps_per_epoch)
  peak = schedule.lr_per_256 * schedule.global_batch_size / 256
  return optimization_config.OptimizationConfig({
      'optimizer': {'type': 'lars', 'lars': {
          'momentum': lars.momentum, 'eeta': lars.eeta,
          'weight_decay_rate': lars.weight_decay,
          'exclude_from_weight_decay': list(opt_configs.LARS_SKIP_LIST),
          'exclude_from_layer_adaptation': list(opt_configs.LARS_SKIP_LIST)}},
      'learning_rate': {'type': 'polynomial', 'polynomial': {
          'initial_learning_rate': peak,
          'decay_steps': max(1, schedule.train_steps - warmup_steps),
          'end_learning_rate': schedule.end_learning_rate, 'power': 2.0}},
      'warmup': {'type': 'linear', 'linear': {
          'warmup_steps': warmup_steps, 'warmup_learning_rate': 0.0}},
      'ema': {'average_decay': ours.trainer.optimizer_config.ema.average_decay},
  })


def build(task, optimizer_config, runtime_config):
  model = task.build_model()
  optimizer = task.create_optimizer(optimizer_config, runtime_config)
  metrics = task.build_metrics(training=True)
  allreduce_share.maybe_shadow_copy(optimizer, model)
  return model, optimizer, metrics


def train_steps(args, replicas: int):
  """{name: zero-argument train step} and the strategy (None: one device)."""
  ours = our_params(args, replicas)
  tasks = {OURS: (task_factory.get_task(ours.task),
                  ours.trainer.optimizer_config),
           MODEL_GARDEN: (mg_task.ImageClassificationTask(
               model_garden_task_config(ours)),
                          model_garden_optimizer_config(ours))}
  strategy = (runtime.mirrored_cpu_strategy(replicas) if replicas > 1
              else None)
  batch, size = args.per_replica_batch, args.image_size
  rng = np.random.default_rng(0)
  make_images = lambda r: tf.constant(  # pylint: disable=g-long-lambda
      rng.uniform(-1, 1, [batch, size, size, 3]), tf.float32)
  make_labels = lambda r: tf.constant(  # pylint: disable=g-long-lambda
      rng.integers(0, NUM_CLASSES, [batch]), tf.int32)
  steps = {}
  for name, (task, optimizer_config) in tasks.items():
    if strategy is None:
      with tf.device('/CPU:0'):
        model, optimizer, metrics = build(task, optimizer_config,
                                          ours.runtime)
        images, labels = make_images(0), make_labels(0)
      steps[name] = _single_device_step(task, model, optimizer, metrics,
                                        images, labels)
    else:
      with strategy.scope():
        model, optimizer, metrics = build(task, optimizer_config,
                                          ours.runtime)
      images = allreduce_share.per_replica_values(strategy, make_images)
      labels = allreduce_share.per_replica_values(strategy, make_labels)
      steps[name] = _replicated_step(strategy, task, model, optimizer,
                                     metrics, images, labels)
    print(f'  {name}: {type(task).__module__}.{type(task).__name__}, '
          f'{sum(v.shape.num_elements() for v in model.trainable_variables):,}'
          f' trainable parameters in {len(model.trainable_variables)} '
          f'variables, optimizer {type(optimizer).__name__}('
          f'{type(allreduce_share.base_optimizer(optimizer)).__name__})'
          + (f', depthwise kernel gradient {depthwise_gradient(ours)}'
             if name == OURS else ''), flush=True)
  return steps, strategy


def depthwise_gradient(ours) -> str:
  return depthwise_conv.resolve_kernel_gradient(
      ours.task.model.backbone.paper_efficientnet.depthwise_kernel_gradient)


def _single_device_step(task, model, optimizer, metrics, images, labels):
  @tf.function
  def step():
    with tf.device('/CPU:0'):
      return task.train_step((images, labels), model, optimizer, metrics)
  return step


def _replicated_step(strategy, task, model, optimizer, metrics, images,
                     labels):
  @tf.function
  def step():
    return strategy.run(
        lambda x, y: task.train_step((x, y), model, optimizer, metrics),
        args=(images, labels))
  return step


def wait(outputs, strategy):
  if strategy is None:
    tf.nest.map_structure(lambda t: t.numpy(), outputs)
  else:
    allreduce_share.sync(outputs, strategy)


def compare(args, replicas: int) -> float:
  where = ('one device (CPU:0)' if replicas == 1
           else f'{replicas} logical CPU replicas (MirroredStrategy)')
  print(f'\n{where}: building both tasks', flush=True)
  steps, strategy = train_steps(args, replicas)
  first = {}
  for name, step in steps.items():
    start = time.perf_counter()
    wait(step(), strategy)
    first[name] = time.perf_counter() - start
    for _ in range(args.warmup):
      wait(step(), strategy)
  wall, cpu = interleaved.time_interleaved(
      steps, args.steps, args.rounds, wait=lambda out: wait(out, strategy))
  global_batch = args.per_replica_batch * replicas
  model_id = our_params(args, 1).task.model.backbone.get().model_id
  print(f'  EfficientNet-{model_id.upper()} {args.image_size}x'
        f'{args.image_size}, {global_batch} images per step, float32; '
        f'median / best over {args.rounds} rounds of {args.steps} steps '
        f'(tf {tf.__version__}, {os.cpu_count()} cores):')
  ips = {}
  for name in steps:
    med = statistics.median(wall[name])
    ips[name] = global_batch / med
    print(f'    {name:13s} {med * 1e3:8.1f} ms/step (best '
          f'{min(wall[name]) * 1e3:7.1f})  {ips[name]:7.1f} images/s  CPU '
          f'{statistics.median(cpu[name]) * 1e3:8.1f} ms/step  trace + first '
          f'step {first[name]:6.1f} s')
  ratio = ips[OURS] / ips[MODEL_GARDEN]
  per_round = sorted(m / o for o, m in zip(wall[OURS], wall[MODEL_GARDEN]))
  cpu_ratio = (statistics.median(cpu[MODEL_GARDEN])
               / statistics.median(cpu[OURS]))
  print(f'  throughput ratio ours / Model Garden: {ratio:.2f} (per-round '
        f'{per_round[0]:.2f}-{per_round[-1]:.2f}; from process CPU time, '
        f'less sensitive to other jobs on the host: {cpu_ratio:.2f}); trace + '
        f'first step ours / Model Garden: '
        f'{first[OURS] / first[MODEL_GARDEN]:.2f}')
  return ratio


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    settings = [int(n) for n in args.settings.split(',') if n]
  except ValueError:
    settings = []
  if not settings or not all(1 <= n <= MAX_REPLICAS for n in settings):
    print(f'error: --settings={args.settings!r}; use replica counts in 1..'
          f'{MAX_REPLICAS}, e.g. 1,4', file=sys.stderr)
    return 2
  for name in ('image_size', 'per_replica_batch', 'steps', 'rounds'):
    if getattr(args, name) < 1:
      print(f'error: --{name}={getattr(args, name)} must be >= 1',
            file=sys.stderr)
      return 2
  start = time.perf_counter()
  try:
    our_params(args, 1)
  except config_overrides.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  ratios = {n: compare(args, n) for n in settings}
  summary = ', '.join(f'{"1 device" if n == 1 else f"{n} replicas"} {r:.2f}x'
                      for n, r in ratios.items())
  print(f'\nsummary: ours / Model Garden training-step throughput: {summary} '
        f'(total {time.perf_counter() - start:.0f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
