"""The run's console: the project's own lines on stdout, Orbit's in the log.

Orbit's controller both logs (absl, INFO) and prints every message: the
start of each train and eval loop, the output dict of each loop (several
lines), each checkpoint save and restore. The project prints its own one-line
summaries of the same events (official_ext.core.progress and the checkpoint
lines here), so on the console Orbit's copies would say everything twice.

- `orbit_prints_to_log()`: while it is active, what Orbit's controller
  module writes to stdout is dropped; those messages stay in the absl log at
  INFO (shown with `--verbosity=0`). Every other write to stdout passes.
  Orbit offers no switch for its prints; redirecting stdout is Python's own
  mechanism and leaves Orbit untouched.
- `ReportingCheckpointManager`: a `tf.train.CheckpointManager` printing one
  short line per save and per restore.
"""
import contextlib
import os
import sys
from typing import Optional, TextIO

import tensorflow as tf

# The module whose prints repeat its log messages (orbit/controller.py's
# `_log` logs a message at INFO, then prints it).
ORBIT_CONTROLLER_MODULE = 'orbit.controller'


class _WithoutOrbitPrints:
  """A text stream that drops the writes Orbit's controller makes."""

  def __init__(self, stream: TextIO):
    self._stream = stream

  def write(self, text: str) -> int:
    # print() is a builtin: the frame calling write() is print's caller.
    caller = sys._getframe(1)  # pylint: disable=protected-access
    if caller.f_globals.get('__name__') == ORBIT_CONTROLLER_MODULE:
      return len(text)
    return self._stream.write(text)

  def __getattr__(self, name):
    # flush, fileno, isatty, encoding, ...: the real stream's.
    return getattr(self._stream, name)


@contextlib.contextmanager
def orbit_prints_to_log():
  """Keeps Orbit's controller prints off stdout (they are in the log)."""
  with contextlib.redirect_stdout(_WithoutOrbitPrints(sys.stdout)):
    yield


def checkpoint_name(path: str) -> str:
  """'/runs/x/ckpt-40' -> 'ckpt-40': model_dir is in the run's first line."""
  return os.path.basename(path)


class ReportingCheckpointManager(tf.train.CheckpointManager):
  """A CheckpointManager that prints one line per save and per restore."""

  def __init__(self, *args, stream: Optional[TextIO] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self._stream = stream

  def _print(self, line: str) -> None:
    print(line, file=self._stream or sys.stdout, flush=True)

  def save(self, *args, **kwargs):
    path = super().save(*args, **kwargs)
    if path is not None:
      self._print(f'saved checkpoint {checkpoint_name(path)}')
    return path

  def restore_or_initialize(self):
    path = super().restore_or_initialize()
    if path is not None:
      self._print(f'restored model from {path}')
    return path
