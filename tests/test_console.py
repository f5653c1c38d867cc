"""The console of a real short run: each event once, no CUDA probe noise."""
import collections
import io
import logging
import re
import sys

import orbit
import tensorflow as tf

from official_ext.core import console
from official_ext.core import native_logs

# absl's prefix ('W1202 13:41:48.795517 1399 deprecation.py:50] ') and
# TensorFlow's own ('WARNING:tensorflow:'): the same message through two
# handlers differs only there.
_LOG_PREFIX = re.compile(
    r'^([IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] |(DEBUG|INFO|WARNING|ERROR):\w+:)')


def _messages(text):
  return [_LOG_PREFIX.sub('', line) for line in text.splitlines()
          if line.strip()]


def _repeated(lines):
  return [l for l, n in collections.Counter(lines).items() if n > 1]


def test_no_line_is_printed_twice(short_run):
  result = short_run.result
  assert not _repeated(_messages(result.stdout)), result.stdout
  assert not _repeated(_messages(result.stderr)), result.stderr
  # Nothing on stdout is said again on stderr either.
  assert not set(_messages(result.stdout)) & set(_messages(result.stderr))


def test_no_cuda_probe_line_without_a_gpu(short_run):
  if native_logs.gpu_present():
    return  # The probe succeeds and TensorFlow's errors stay visible.
  both = short_run.result.stdout + short_run.result.stderr
  for sign in ('cuInit', 'cuda_platform', 'Could not find cuda drivers',
               'CUDA error'):
    assert sign not in both


def test_one_line_per_train_loop_evaluation_and_save(short_run):
  lines = short_run.result.stdout.splitlines()
  # 4 steps, 2 per loop; an evaluation and a checkpoint after each epoch.
  train_lines = [l for l in lines if l.startswith('step ')]
  assert [l.split(' | ')[0] for l in train_lines] == ['step 2/4', 'step 4/4']
  for line in train_lines:
    assert re.search(r'\| epoch [\d.]+ \| loss [\d.]+ \| lr [\d.e-]+ \| '
                     r'[\d.]+ images/s \| [\d.]+ images/ms \| ETA ', line)
  eval_lines = [l for l in lines if l.startswith('eval at step')]
  assert [l.split(' | ')[0] for l in eval_lines] == [
      'eval at step 2', 'eval at step 4']
  for line in eval_lines:
    # 4 classes: top-4 stands in for top-5.
    assert re.search(r'\| top-1 [\d.]+ \| top-4 [\d.]+ \| loss [\d.]+ \| '
                     r'elapsed \S+ \| peak top-1 [\d.]+ at \S+$', line), line
  assert [l for l in lines if 'checkpoint' in l] == [
      'saved checkpoint ckpt-2', 'saved checkpoint ckpt-4']
  # Orbit's own lines (and its multi-line output dicts) are log-only.
  assert not [l for l in lines if '| step:' in l or l.startswith((' ', '{'))]
  assert len(lines) == (1 + len(train_lines) + len(eval_lines) + 2 +
                        1)  # the run's first line; 2 saves; time to accuracy


class _CountingTrainer(orbit.AbstractTrainer):

  def __init__(self):
    self.step = tf.Variable(0, dtype=tf.int64)

  def train(self, num_steps):
    self.step.assign_add(tf.cast(num_steps, tf.int64))
    return {'loss': 1.5}


def test_orbit_messages_go_to_the_log_only(capsys, caplog, tmp_path):
  trainer = _CountingTrainer()
  checkpoint = tf.train.Checkpoint(step=trainer.step)
  manager = console.ReportingCheckpointManager(
      checkpoint, str(tmp_path), max_to_keep=2, step_counter=trainer.step,
      checkpoint_interval=2)
  caplog.set_level(logging.INFO)
  with console.orbit_prints_to_log():
    controller = orbit.Controller(trainer=trainer, global_step=trainer.step,
                                  steps_per_loop=2,
                                  checkpoint_manager=manager)
    controller.train(4)
  printed = capsys.readouterr().out.splitlines()
  assert printed == ['saved checkpoint ckpt-2', 'saved checkpoint ckpt-4']
  logged = [r.getMessage() for r in caplog.records]
  assert any(m.startswith('train | step:      4 | steps/sec:') and
             "'loss': 1.5" in m for m in logged), logged
  assert any(m.startswith('saved checkpoint to ') for m in logged), logged

  # A restart restores the latest checkpoint: one line.
  trainer.step.assign(0)
  with console.orbit_prints_to_log():
    orbit.Controller(trainer=trainer, global_step=trainer.step,
                     steps_per_loop=2, checkpoint_manager=manager)
  assert capsys.readouterr().out == (
      f'restored model from {tmp_path / "ckpt-4"}\n')
  assert int(trainer.step.numpy()) == 4


def test_only_orbit_controller_writes_are_dropped():
  real = io.StringIO()
  stream = console._WithoutOrbitPrints(real)  # pylint: disable=protected-access
  orbit_globals = {'__name__': console.ORBIT_CONTROLLER_MODULE,
                   'stream': stream}
  exec('print("train | step: 2 | output: {}", file=stream)',  # pylint: disable=exec-used
       orbit_globals)
  print('step 2/4 | loss 1.0', file=stream)
  assert real.getvalue() == 'step 2/4 | loss 1.0\n'


def test_orbit_prints_to_log_restores_stdout():
  before = sys.stdout
  with console.orbit_prints_to_log():
    assert sys.stdout is not before
  assert sys.stdout is before
