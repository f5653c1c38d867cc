"""Model Garden's Trainer, timed the way the paper times its runs.

`TimedTrainer` extends `official.core.base_trainer.Trainer` (passed to
`train_utils.create_trainer` as `trainer_cls`) with:
  - building the train and eval functions before the clock starts: on the
    first `train` (or `evaluate`) call, after the Orbit controller restored
    the checkpoint, it runs the train loop and the eval loop for 0 steps. The
    loops are tf.while_loops, so this traces and instantiates them (XLA
    compiles them on TPU) without running a step or reading a batch;
  - the time-to-accuracy clock (`official_ext.core.time_to_accuracy`), which
    starts right after that and is saved in the checkpoint, so a restarted run
    carries on from the time of the checkpoint it resumes from;
  - global images/s and images/ms of every train loop, in the train outputs
    (Orbit writes them to TensorBoard and hands them to the actions);
  - elapsed seconds, epoch, peak top-1 and time to peak in every eval's
    outputs (TensorBoard validation scalars), and summary.json after every
    evaluation;
  - one set of BN moving statistics and EMA shadows on every replica after
    each train loop (`official_ext.core.replica_statistics`), so that each
    evaluation and each checkpoint sees the same model;
  - the divergence guard (`official_ext.core.divergence`): a loop with a
    non-finite loss or gradient norm raises `TrainingDiverged` at its end,
    before anything is saved.
"""
import time
from typing import Optional

import tensorflow as tf

from official.core import base_trainer
from official.modeling import optimization

from official_ext.core import divergence
from official_ext.core import replica_statistics
from official_ext.core import time_to_accuracy as tta

_ZERO_STEPS = 0


class TimedTrainer(base_trainer.Trainer):
  """Trainer with function pre-building, a time-to-accuracy clock, images/s."""

  def __init__(self, config, task, model, optimizer, train: bool = True,
               evaluate: bool = True, checkpoint_exporter=None,
               time_to_accuracy: Optional[tta.TimeToAccuracy] = None,
               **kwargs):
    super().__init__(config, task, model=model, optimizer=optimizer,
                     train=train, evaluate=evaluate,
                     checkpoint_exporter=checkpoint_exporter, **kwargs)
    self._can_train, self._can_evaluate = train, evaluate
    self._global_batch_size = config.task.train_data.global_batch_size
    self.time_to_accuracy = time_to_accuracy
    self._functions_built = False
    self._building = False
    self._loop_start: Optional[float] = None
    self._loop_start_step = 0
    # Seconds on the time-to-accuracy clock, saved with every checkpoint.
    self.elapsed_variable = tf.Variable(
        0.0, dtype=tf.float32, trainable=False, name='time_to_accuracy_s',
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.checkpoint.time_to_accuracy_s = self.elapsed_variable
    self.sync_replica_statistics = replica_statistics.ReplicaStatisticsSync(
        self.strategy, self.model, self.optimizer)
    with self.strategy.scope():
      self.divergence_guard = divergence.DivergenceGuard(
          config.trainer.loss_upper_bound)

  # -- Building the functions, then starting the clock ----------------------

  def build_functions(self) -> None:
    """Traces and instantiates the train and eval loops without running."""
    self._building = True
    try:
      zero = tf.constant(_ZERO_STEPS, tf.int32)
      if self._can_train:
        super().train(zero)  # Its train_loop_end traces the statistics sync.
      # A Python eval loop would trace its step only at the first real step.
      if self._can_evaluate and self.config.trainer.eval_tf_while_loop:
        super().evaluate(zero)
    finally:
      self._building = False
    self._functions_built = True

  def _start_clock(self) -> None:
    if not self._functions_built:
      self.build_functions()
    if self.time_to_accuracy and not self.time_to_accuracy.started:
      self.time_to_accuracy.start(int(self.global_step.numpy()),
                                  float(self.elapsed_variable.numpy()))

  def _save_elapsed(self) -> None:
    if self.time_to_accuracy:
      self.elapsed_variable.assign(self.time_to_accuracy.elapsed_s())

  def train(self, num_steps):
    self._start_clock()
    return super().train(num_steps)

  def evaluate(self, num_steps):
    self._start_clock()
    return super().evaluate(num_steps)

  # -- The train step, watched by the divergence guard ---------------------

  def train_step(self, iterator):
    """Model Garden's train step, reporting loss and gradient norm."""

    def step_fn(inputs):
      logs = self.task.train_step(inputs, model=self.model,
                                  optimizer=self.optimizer,
                                  metrics=self.train_metrics)
      self.train_loss.update_state(logs[self.task.loss])
      self.global_step.assign_add(1)
      self.divergence_guard.update(logs[self.task.loss],
                                   logs.get(divergence.GRADIENT_NORM), self.global_step)

    self.strategy.run(step_fn, args=(self.next_train_inputs(iterator),),
                      options=self._runtime_options)

  def _learning_rate_at(self, step: int) -> float:
    """The learning rate step `step` (counted from 1) trained with."""
    rate = self.optimizer.learning_rate
    return float(rate(step - 1) if callable(rate) else rate)

  # -- Throughput of each train loop ---------------------------------------

  def train_loop_begin(self):
    super().train_loop_begin()
    self._loop_start_step = int(self.global_step.numpy())
    self._loop_start = time.monotonic()

  def train_loop_end(self):
    logs = super().train_loop_end()  # Reads the metrics: the loop is done.
    # Both before the controller saves a checkpoint or evaluates.
    self.divergence_guard.check(self._learning_rate_at)
    self.sync_replica_statistics()
    steps = int(self.global_step.numpy()) - self._loop_start_step
    seconds = time.monotonic() - self._loop_start
    if self._building or steps <= 0 or seconds <= 0:
      return logs
    images = steps * self._global_batch_size
    logs['images_per_second'] = images / seconds
    logs['images_per_ms'] = images / seconds / 1000.0
    if self.time_to_accuracy:
      self.time_to_accuracy.record_train_loop(images, seconds)
    self._save_elapsed()
    return logs

  # -- Time to accuracy at every evaluation ---------------------------------

  def eval_end(self, *args):
    if self._building:
      # Skip metrics and best-checkpoint export; undo eval_begin's EMA swap.
      if isinstance(self.optimizer, optimization.ExponentialMovingAverage):
        self.optimizer.swap_weights()
      return {}
    logs = super().eval_end(*args)
    if self.time_to_accuracy and 'top_1_accuracy' in logs:
      top5 = next((v for k, v in logs.items()
                   if k.startswith('top_') and k != 'top_1_accuracy'), None)
      logs.update(self.time_to_accuracy.record_eval(
          int(self.global_step.numpy()), float(logs['top_1_accuracy']),
          None if top5 is None else float(top5),
          None if 'validation_loss' not in logs
          else float(logs['validation_loss'])))
      self._save_elapsed()
    return logs
