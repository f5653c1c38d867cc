"""A kill during a checkpoint write never leaves a latest checkpoint that fails
to restore.

Runs train the way Orbit saves them (`tf.train.CheckpointManager`): the data
is written to temporary files and renamed, and the `checkpoint` state file is
replaced atomically after it. A child process saves a large checkpoint in a
loop (save k holds the value k everywhere) and is SIGKILLed at several
moments inside a write; the latest checkpoint must then restore completely,
to one save's values, and a new save must still work.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

CHILD = textwrap.dedent('''
    import sys
    import tensorflow as tf
    directory = sys.argv[1]
    weights = tf.Variable(tf.zeros([16, 1024, 1024]))  # 64 MiB per save.
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(weights=weights, step=step)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2)
    if manager.latest_checkpoint:
      checkpoint.restore(manager.latest_checkpoint).assert_consumed()
    while True:
      step.assign_add(1)
      weights.assign(tf.fill(weights.shape, tf.cast(step, tf.float32)))
      print('saving', int(step), flush=True)
      manager.save(checkpoint_number=int(step))
''')


def _restore(directory):
  weights = tf.Variable(tf.zeros([16, 1024, 1024]))
  step = tf.Variable(0, dtype=tf.int64)
  checkpoint = tf.train.Checkpoint(weights=weights, step=step)
  latest = tf.train.latest_checkpoint(directory)
  assert latest, os.listdir(directory)
  checkpoint.restore(latest).assert_consumed()
  return latest, int(step.numpy()), weights.numpy()


@pytest.mark.parametrize('delay_s', [0.0, 0.05, 0.15])
def test_kill_during_checkpoint_write_leaves_a_restorable_latest(tmp_path,
                                                                 delay_s):
  script = tmp_path / 'save_loop.py'
  script.write_text(CHILD)
  directory = str(tmp_path / 'ckpt')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  child = subprocess.Popen([sys.executable, str(script), directory],
                           stdout=subprocess.PIPE, text=True, env=env)
  try:
    # Let two saves complete, then kill inside the third write.
    for _ in range(3):
      line = child.stdout.readline()
      assert line.startswith('saving'), line
    time.sleep(delay_s)
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  latest, step, weights = _restore(directory)
  assert latest.endswith(f'ckpt-{step}')
  assert step >= 2
  np.testing.assert_array_equal(np.unique(weights), [float(step)])

  # A run started over the debris resumes and saves again.
  rerun = subprocess.Popen([sys.executable, str(script), directory],
                           stdout=subprocess.PIPE, text=True, env=env)
  try:
    for _ in range(2):
      assert rerun.stdout.readline().startswith('saving')
  finally:
    rerun.send_signal(signal.SIGKILL)
    rerun.wait()
  _, later_step, _ = _restore(directory)
  assert later_step > step
