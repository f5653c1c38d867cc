"""Human-readable progress lines as Orbit train and eval actions.

After every train loop: step, epoch, loss, learning rate, global images/s and
images/ms (Table 1's unit) measured over the train loop alone, and the ETA;
after every evaluation: top-1, top-5, loss, the time-to-accuracy clock and the
peak so far; at the end, the time to peak top-1 (and for the paper's Table 2
rows, the time to the paper's top-1). Lines go to stdout.
"""
import sys
from typing import Any, Dict, Optional, TextIO

import numpy as np


def _scalar(value) -> Optional[float]:
  if value is None:
    return None
  try:
    return float(np.asarray(value).reshape(-1)[0] if np.ndim(value) else value)
  except (TypeError, ValueError):
    return None


def format_duration(seconds: float) -> str:
  """301.5 -> '5m01s'; hours when needed ('1h02m03s')."""
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{secs:02d}s' if hours else (
      f'{minutes}m{secs:02d}s')


class ProgressReporter:
  """Prints one line per train loop and per evaluation.

  Throughput comes from the train outputs (`images_per_second`, timed over
  the train loop alone by official_ext.core.timed_trainer.TimedTrainer).
  """

  def __init__(self, global_step, train_steps: int,
               global_batch_size: int, steps_per_epoch: float,
               stream: TextIO = sys.stdout):
    self._global_step = global_step
    self._train_steps = train_steps
    self._global_batch_size = global_batch_size
    self._steps_per_epoch = steps_per_epoch
    self._stream = stream
    self.last_eval: Dict[str, Any] = {}  # The outputs of the last evaluation.

  def _print(self, line: str) -> None:
    print(line, file=self._stream, flush=True)

  def train_action(self, output: Optional[Dict[str, Any]]) -> None:
    output = output or {}
    step = int(self._global_step.numpy())
    parts = [f'step {step}/{self._train_steps}',
             f'epoch {step / self._steps_per_epoch:.2f}']
    loss = _scalar(output.get('training_loss', output.get('loss')))
    if loss is not None:
      parts.append(f'loss {loss:.4f}')
    lr = _scalar(output.get('learning_rate'))
    if lr is not None:
      parts.append(f'lr {lr:.5g}')
    images_per_second = _scalar(output.get('images_per_second'))
    if images_per_second:
      eta = ((self._train_steps - step) * self._global_batch_size /
             images_per_second)
      parts += [f'{images_per_second:.1f} images/s',
                f'{images_per_second / 1000:.4f} images/ms',
                f'ETA {format_duration(eta)}']
    self._print(' | '.join(parts))

  def eval_action(self, output: Optional[Dict[str, Any]]) -> None:
    output = output or {}
    self.last_eval = dict(output)
    step = int(self._global_step.numpy())
    parts = [f'eval at step {step}',
             f'epoch {step / self._steps_per_epoch:.2f}']
    # top-5, or top-k with k the class count when there are fewer classes.
    top_k = next((k for k in sorted(output)
                  if k.startswith('top_') and k.endswith('_accuracy')
                  and k != 'top_1_accuracy'), 'top_5_accuracy')
    for key, label in (('top_1_accuracy', 'top-1'),
                       (top_k, top_k[:-len('_accuracy')].replace('_', '-')),
                       ('validation_loss', 'loss')):
      value = _scalar(output.get(key))
      if value is not None:
        parts.append(f'{label} {value:.4f}')
    elapsed = _scalar(output.get('elapsed_s'))
    if elapsed is not None:
      parts.append(f'elapsed {format_duration(elapsed)}')
    peak, time_to_peak = (_scalar(output.get('peak_top1')),
                          _scalar(output.get('time_to_peak_s')))
    if peak is not None and time_to_peak is not None:
      parts.append(f'peak top-1 {peak:.4f} at {format_duration(time_to_peak)}')
    self._print(' | '.join(parts))

  def report_time_to_accuracy(self, record) -> None:
    """One closing line: peak top-1, when it was reached, throughput."""
    peak = record.peak
    if peak is None:
      return
    line = (f'time to accuracy: peak top-1 {peak.top1:.4f} at step '
            f'{peak.step} (epoch {peak.epoch:.2f}) after '
            f'{format_duration(peak.elapsed_s)} ({peak.elapsed_s:.1f} s)')
    if record.images_per_second:
      line += (f' | {record.images_per_second:.1f} images/s, '
               f'{record.images_per_second / 1000:.4f} images/ms')
    if record.paper_top1 is not None:
      target = record.paper_target
      line += f" | the paper's top-1 {record.paper_top1:.4f} " + (
          f'reached at step {target.step} after '
          f'{format_duration(target.elapsed_s)}' if target
          else 'not reached')
    self._print(line)
