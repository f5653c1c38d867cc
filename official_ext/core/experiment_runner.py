"""Model Garden's experiment runner, with non-chief workers kept out of model_dir.

Under MultiWorkerMirroredStrategy every worker runs the same program on the
same model_dir, and every worker must save when the chief saves (reading a
synchronized variable is a collective). Model Garden's
`train_lib.OrbitExperimentRunner` gets this half right: it sends a non-chief
worker's regular checkpoints to a fresh temporary directory. But

- the same manager is where that worker *restores* from, so a resumed
  (preempted) run starts the chief from model_dir's checkpoint and the other
  workers from scratch: different weights and step counts, which ends in a
  hang or a collective error; an eval-only run evaluates random weights on the
  non-chief workers' shards of the eval set;
- `actions.get_eval_actions` points every worker's EMA checkpoint action at
  model_dir/ema_checkpoints, and two workers saving one checkpoint prefix race
  (one deletes the other's `_temp` shard: `MergeV2Checkpoints` NotFound).

`ExperimentRunner` is the subclass Model Garden's runner documents for
replacing components. Given a worker's scratch directory (None on the chief
and single-process runs, which behave as in Model Garden), it saves
that worker's checkpoints and EMA checkpoints there, but restores from the
chief's latest checkpoint in model_dir and counts its save interval from that
checkpoint's step, as the chief does. The run driver also keeps those
workers' TensorBoard events and best-checkpoint exports out of model_dir.

On every worker the console shows the project's lines, not Orbit's
(official_ext.core.console): the checkpoint manager is Model Garden's with a
one-line report per save and restore, and Orbit's own prints go to the log
only.
"""
import os
import re
from typing import Optional

import tensorflow as tf

from official.core import actions
from official.core import train_lib

from official_ext.core import console


def saved_step(checkpoint_path: str) -> int:
  """The global step in a Model Garden trainer checkpoint.

  Read from the file: restoring the trainer's distributed variables instead
  would be a collective, out of step with the other workers.
  """
  # base_trainer.Trainer checkpoints its step as the attribute `global_step`.
  reader = tf.train.load_checkpoint(checkpoint_path)
  return int(reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE'))


class ExperimentRunner(train_lib.OrbitExperimentRunner):
  """`OrbitExperimentRunner` whose non-chief workers write only to scratch.

  Args:
    *args, **kwargs: those of `train_lib.OrbitExperimentRunner`.
    worker_scratch_dir: an existing directory private to this worker, for a
      non-chief worker of a multi-worker job; None for the chief.
  """

  def __init__(self, *args, worker_scratch_dir: Optional[str] = None,
               **kwargs):
    # The base constructor builds the checkpoint manager and controller.
    self._worker_scratch_dir = worker_scratch_dir
    super().__init__(*args, **kwargs)

  def _maybe_build_checkpoint_manager(
      self) -> Optional[tf.train.CheckpointManager]:
    if not self.trainer.checkpoint:
      return super()._maybe_build_checkpoint_manager()
    if self._worker_scratch_dir is None:
      if not self.strategy.extended.should_checkpoint:
        return super()._maybe_build_checkpoint_manager()
      # Model Garden's manager of the chief (or the only process).
      return self._checkpoint_manager_in(
          self.model_dir, max_to_keep=self.params.trainer.max_to_keep,
          init_fn=self.trainer.initialize)
    if 'train' not in self._mode:
      # An eval-only controller never saves: read model_dir like the chief.
      return self._checkpoint_manager_in(
          self.model_dir, max_to_keep=self.params.trainer.max_to_keep,
          init_fn=self.trainer.initialize)
    latest = tf.train.latest_checkpoint(self.model_dir)
    return self._checkpoint_manager_in(
        os.path.join(self._worker_scratch_dir, 'checkpoints'), max_to_keep=1,
        # The chief's manager counts its save interval from the step it
        # restores; so must this one, or the workers would save (a
        # collective) at different steps and hang.
        last_checkpoint_step=saved_step(latest) if latest else None,
        # Called when scratch holds no checkpoint of this worker's: by the
        # controller where the chief restores (the order of collectives must
        # match), or by a recovery action.
        init_fn=self._restore_chief_checkpoint)

  def _checkpoint_manager_in(self, directory: str, **kwargs):
    """A manager of the trainer's checkpoint, with the trainer's interval."""
    return console.ReportingCheckpointManager(
        self.trainer.checkpoint, directory=directory,
        step_counter=self.trainer.global_step,
        checkpoint_interval=self.params.trainer.checkpoint_interval, **kwargs)

  def _restore_chief_checkpoint(self) -> None:
    """Restores model_dir's latest checkpoint, or initializes as the chief."""
    latest = tf.train.latest_checkpoint(self.model_dir)
    if latest is None:
      self.trainer.initialize()
      return
    self.trainer.checkpoint.restore(latest)
    # This worker's own directory holds no checkpoint, so its manager
    # reports no restore: say what was restored.
    print(f'restored model from {latest} (the chief\'s checkpoint).',
          flush=True)

  def run(self):
    with console.orbit_prints_to_log():
      return super().run()

  def _build_controller(self, *args, **kwargs):
    # Building the controller restores the checkpoint, which Orbit prints.
    with console.orbit_prints_to_log():
      controller = super()._build_controller(*args, **kwargs)
    if self._worker_scratch_dir is not None:
      controller.eval_actions = tuple(
          self._ema_checkpoints_to_scratch(action)
          for action in controller.eval_actions)
    return controller

  def _ema_checkpoints_to_scratch(self, action):
    if not isinstance(action, actions.EMACheckpointing):
      return action
    return actions.EMACheckpointing(
        export_dir=self._worker_scratch_dir,
        optimizer=self.trainer.optimizer,
        checkpoint=self.trainer.checkpoint,
        max_to_keep=1)


# What TensorFlow reports on the surviving workers when a worker of a
# multi-worker job dies: its coordination service stops getting the dead
# worker's heartbeats (after its heartbeat timeout, 10 s by default) and
# aborts every collective.
_WORKER_FAILURE_SIGNS = ('unhealthy (stopped sending heartbeats)',
                         'Collective ops is aborted',
                         'The tasks have crashed')


def worker_failure_message(error: BaseException) -> Optional[str]:
  """One line for a peer worker's death, or None for any other error."""
  if not isinstance(error, tf.errors.OpError):
    return None
  text = str(error)
  if not any(sign in text for sign in _WORKER_FAILURE_SIGNS):
    return None
  dead = sorted(set(re.findall(r'/job:[\w-]+/replica:\d+/task:\d+', text)))
  who = f' ({", ".join(dead)})' if dead else ''
  return (f'another worker of this multi-worker job stopped{who}, so every '
          'collective was aborted; rerun the same command on every worker to '
          'resume from the last checkpoint')
