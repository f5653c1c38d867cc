r"""Per-step cost of making BN moving statistics and EMA shadows equal.

The trainer averages every replica's BN moving statistics and their EMA
shadows once per train loop (official_ext.core.replica_statistics), instead
of reducing them in every BN layer at every step as the reference code does.
This times a train step and one sync of the demo experiment (EfficientNet-B0,
4 logical CPU replicas) in the same process, alternated, and prints the sync
cost per step at the demo's steps_per_loop and at the paper rows'.

  python benchmarks/replica_statistics_sync.py [--rounds 5] [--replicas 4]
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf

import experiments  # pylint: disable=unused-import
from official.core import task_factory
from official.core import train_utils
from official_ext.core import config_overrides
from official_ext.core import runtime
from official_ext.core import timed_trainer


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--replicas', type=int, default=4)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=5,
                      help='train steps timed per round')
  parser.add_argument('--syncs', type=int, default=20,
                      help='syncs timed per round')
  args = parser.parse_args()

  runtime.configure_logical_cpus(args.replicas)
  params = config_overrides.parse_configuration(
      'effnet_b0_digits', params_override=(
          f'runtime.num_cpu_replicas={args.replicas},'
          f'trainer.steps_per_loop={args.steps}'))
  demo_steps_per_loop = config_overrides.parse_configuration(
      'effnet_b0_digits').trainer.steps_per_loop
  paper_steps_per_loop = config_overrides.parse_configuration(
      'effnet_b5_lars_65k').trainer.steps_per_loop
  strategy = runtime.mirrored_cpu_strategy(args.replicas)
  with strategy.scope():
    task = task_factory.get_task(params.task)
    trainer = train_utils.create_trainer(
        params, task, train=True, evaluate=False,
        trainer_cls=timed_trainer.TimedTrainer)
  sync = trainer.sync_replica_statistics
  floats = sum(int(tf.size(v)) for v in sync.variables)
  steps = tf.constant(args.steps, tf.int32)
  trainer.train(steps)  # Builds the loop and the sync (traced once).
  sync()

  step_ms, sync_ms = [], []
  for _ in range(args.rounds):
    start = time.perf_counter()
    trainer.train(steps)
    step_ms.append((time.perf_counter() - start) * 1e3 / args.steps)
    start = time.perf_counter()
    for _ in range(args.syncs):
      sync()
    sync_ms.append((time.perf_counter() - start) * 1e3 / args.syncs)
  step, one_sync = statistics.median(step_ms), statistics.median(sync_ms)
  print(f'EfficientNet-B0, {args.replicas} CPU replicas, '
        f'{len(sync.variables)} replica-local variables '
        f'({floats} floats per replica: BN moving statistics and their EMA)')
  print(f'  train step      {step:9.2f} ms (median of {args.rounds} rounds; '
        'the train loop includes one sync)')
  print(f'  one sync        {one_sync:9.3f} ms')
  for label, per_loop in (('demo', demo_steps_per_loop),
                          ('paper rows', paper_steps_per_loop)):
    print(f'  per step at steps_per_loop={per_loop} ({label}): '
          f'{one_sync / per_loop:.4f} ms = '
          f'{100 * one_sync / per_loop / step:.3f}% of a step')


if __name__ == '__main__':
  main()
