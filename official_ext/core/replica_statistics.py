"""One set of batch-norm moving statistics, and of their EMA, on every replica.

Why: under MirroredStrategy, MultiWorkerMirroredStrategy and TPUStrategy
every replica keeps its own BN moving mean and variance (ON_READ variables,
updated from that replica's, or its group's, batch statistics), and Model
Garden's `ExponentialMovingAverage` keeps a shadow of each on each replica
(components of a MirroredVariable, updated replica by replica). A checkpoint
stores the mean of the moving statistics but replica 0's shadow, and during
training replica i evaluates its shard of the eval set with its own
statistics: the peak top-1 would be measured on a model that is never saved.

The reference code (`DistributedBatchNormalization`) updates the moving
statistics of every replica with the all-replica average of the group
statistics at every step. Moving averages are linear, so the mean over
replicas of the per-replica moving statistics, and of their EMA shadows, is
that same number. `ReplicaStatisticsSync` assigns it to every replica with
one batched all-reduce per call: the run calls it after each train loop
(before any checkpoint or evaluation), instead of two reductions per BN
layer per step. Training does not read moving statistics or shadows, so
it is unchanged.
"""
from typing import List

import tensorflow as tf
import tf_keras

from official.modeling import optimization


def replica_local_variables(model: tf_keras.Model,
                            optimizer) -> List[tf.Variable]:
  """The model's ON_READ variables and their EMA shadows, if any.

  ON_READ variables are the BN moving statistics (each replica has its own);
  trainable weights and their shadows are identical on every replica.
  """
  local = [v for v in model.variables
           if v.synchronization == tf.VariableSynchronization.ON_READ]
  shadows = []
  if isinstance(optimizer, optimization.ExponentialMovingAverage):
    for variable in local:
      try:
        shadows.append(optimizer.get_slot(variable, 'average'))
      except KeyError:  # EMA of trainable weights only.
        pass
  return local + shadows


class ReplicaStatisticsSync:
  """Sets each replica-local statistic to its mean over all replicas.

  Call in a cross-replica context (e.g. a trainer's `train_loop_end`). A
  no-op with one replica or no such variables.
  """

  def __init__(self, strategy: tf.distribute.Strategy, model: tf_keras.Model,
               optimizer):
    self._strategy = strategy
    self._variables = (replica_local_variables(model, optimizer)
                       if strategy.num_replicas_in_sync > 1 else [])
    self._sync = tf.function(self._mean_to_every_replica)

  @property
  def variables(self) -> List[tf.Variable]:
    return list(self._variables)

  def __call__(self) -> None:
    if self._variables:
      self._sync()

  def _mean_to_every_replica(self):
    variables = self._variables

    def local_means():
      context = tf.distribute.get_replica_context()
      # In a replica context a read gives this replica's own copy.
      return context.all_reduce(tf.distribute.ReduceOp.MEAN,
                                [tf.identity(v) for v in variables])

    means = self._strategy.run(local_means)
    for variable, mean in zip(variables, means):
      self._strategy.extended.update(
          variable, lambda var, value: var.assign(value), args=(mean,),
          group=False)
