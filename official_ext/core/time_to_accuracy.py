"""Time to accuracy: the paper's headline number, as a record of one run.

The paper times training "from just after the distributed train/eval loop is
initialized until peak top-1 is reached". Here the clock starts right after
the train and eval functions are built and the checkpoint is restored (see
`official_ext.core.timed_trainer`), and runs through training and evaluation
alike. Every evaluation records elapsed seconds, step, epoch, top-1, top-5 and
loss; the peak is the highest top-1 and the time, step and epoch at which it
was *first* reached.

Runs of the paper's Table 2 experiments also carry the paper's peak top-1 for
their row (`paper_top1`) and the time to that target, MLPerf style: the
elapsed seconds, step and epoch of the first evaluation that reached it, or
null while (or if) no evaluation has.

The record lives in `model_dir/summary.json`, rewritten atomically after every
evaluation. After a restart from a checkpoint at step S, evaluations past S
(they will be redone) are dropped and the clock carries on from the time
stored with that checkpoint, so a resumed run reports one continuous clock.
"""
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf

SUMMARY_FILE = 'summary.json'

# Top-1 is a float32 ratio (41,500 / 50,000 is 0.82999998): a target counts
# as reached within this margin, a twentieth of one image in 50,000.
TARGET_TOLERANCE = 1e-6


@dataclasses.dataclass
class EvalRecord:
  step: int
  epoch: float
  elapsed_s: float
  top1: float
  top5: Optional[float] = None
  loss: Optional[float] = None


def _finite_or_none(value) -> Optional[float]:
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


class RunRecord:
  """Evaluations, peak top-1 and train throughput of one run (pure Python)."""

  def __init__(self, experiment: str, hparams: Dict[str, Any],
               train_steps: int, steps_per_epoch: float,
               paper_top1: Optional[float] = None):
    self.experiment = experiment
    # The paper's peak top-1 for this experiment's row (None: not a row).
    self.paper_top1 = paper_top1
    self.hparams = dict(hparams)
    self.train_steps = int(train_steps)
    self.steps_per_epoch = float(steps_per_epoch)
    self.evals: List[EvalRecord] = []
    self.train_images = 0
    self.train_seconds = 0.0
    self.elapsed_s = 0.0
    self.status = 'running'

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch if self.steps_per_epoch else 0.0

  def add_train_loop(self, images: int, seconds: float) -> None:
    self.train_images += int(images)
    self.train_seconds += float(seconds)

  def add_eval(self, step: int, elapsed_s: float, top1: float,
               top5: Optional[float] = None,
               loss: Optional[float] = None) -> EvalRecord:
    record = EvalRecord(step=int(step), epoch=self.epoch(step),
                        elapsed_s=float(elapsed_s), top1=float(top1),
                        top5=_finite_or_none(top5),
                        loss=_finite_or_none(loss))
    self.evals.append(record)
    self.elapsed_s = max(self.elapsed_s, record.elapsed_s)
    return record

  @property
  def peak(self) -> Optional[EvalRecord]:
    """The first evaluation that reached the highest top-1."""
    best = None
    for record in self.evals:
      if best is None or record.top1 > best.top1:
        best = record
    return best

  def first_reaching(self, target: float) -> Optional[EvalRecord]:
    """The first evaluation whose top-1 reached `target`, or None."""
    return next((e for e in self.evals
                 if e.top1 >= target - TARGET_TOLERANCE), None)

  @property
  def paper_target(self) -> Optional[EvalRecord]:
    """The first evaluation that reached the paper's top-1, or None."""
    if self.paper_top1 is None:
      return None
    return self.first_reaching(self.paper_top1)

  @property
  def images_per_second(self) -> Optional[float]:
    if self.train_seconds <= 0:
      return None
    return self.train_images / self.train_seconds

  def truncate_after(self, step: int) -> None:
    """Forgets evaluations past `step` (a restart redoes them)."""
    self.evals = [e for e in self.evals if e.step <= step]

  def last_elapsed_s(self) -> float:
    return max([e.elapsed_s for e in self.evals], default=0.0)

  def to_json(self) -> Dict[str, Any]:
    peak = self.peak
    target = self.paper_target
    images_per_second = self.images_per_second
    return {
        'experiment': self.experiment,
        'hparams': self.hparams,
        'peak_top1': peak.top1 if peak else None,
        'time_to_peak_s': peak.elapsed_s if peak else None,
        'step_at_peak': peak.step if peak else None,
        'epoch_at_peak': peak.epoch if peak else None,
        'paper_top1': self.paper_top1,
        'paper_top1_reached': (None if self.paper_top1 is None
                               else target is not None),
        'time_to_paper_top1_s': target.elapsed_s if target else None,
        'step_at_paper_top1': target.step if target else None,
        'epoch_at_paper_top1': target.epoch if target else None,
        'images_per_second': images_per_second,
        'images_per_ms': (images_per_second / 1000.0
                          if images_per_second is not None else None),
        'train_steps': self.train_steps,
        'steps_per_epoch': self.steps_per_epoch,
        'elapsed_s': self.elapsed_s,
        'train_images': self.train_images,
        'train_seconds': self.train_seconds,
        'status': self.status,
        'evals': [dataclasses.asdict(e) for e in self.evals],
    }

  @classmethod
  def from_json(cls, data: Dict[str, Any]) -> 'RunRecord':
    paper_top1 = data.get('paper_top1')
    record = cls(data['experiment'], data.get('hparams') or {},
                 data.get('train_steps') or 0,
                 data.get('steps_per_epoch') or 0.0,
                 None if paper_top1 is None else float(paper_top1))
    record.evals = [EvalRecord(**e) for e in data.get('evals', [])]
    record.train_images = int(data.get('train_images') or 0)
    record.train_seconds = float(data.get('train_seconds') or 0.0)
    record.elapsed_s = float(data.get('elapsed_s') or 0.0)
    record.status = data.get('status', 'running')
    return record


def summary_path(model_dir: str) -> str:
  return os.path.join(model_dir, SUMMARY_FILE)


def write_summary(record: RunRecord, model_dir: str) -> str:
  """Writes summary.json atomically (temp file, then rename)."""
  path = summary_path(model_dir)
  temp = path + '.tmp'
  with tf.io.gfile.GFile(temp, 'w') as f:
    json.dump(record.to_json(), f, indent=1, allow_nan=False)
    f.write('\n')
  tf.io.gfile.rename(temp, path, overwrite=True)
  return path


def read_summary(model_dir: str) -> Optional[RunRecord]:
  """The run record in model_dir, or None if there is none."""
  path = summary_path(model_dir)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    try:
      return RunRecord.from_json(json.load(f))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f'{path} is not a summary written by this project '
                       f'({e.__class__.__name__}: {e})') from e


class TimeToAccuracy:
  """A run record plus the clock, and where the record is written.

  `start(offset_s)` starts the clock (carrying `offset_s` seconds over from an
  earlier session); `elapsed_s()` reads it; `record_eval` and
  `record_train_loop` feed the record; `write()` rewrites summary.json.
  """

  def __init__(self, record: RunRecord, model_dir: Optional[str],
               clock: Callable[[], float] = time.monotonic):
    self.record = record
    self.model_dir = model_dir
    self._clock = clock
    self._start: Optional[float] = None
    self._offset_s = 0.0

  @property
  def started(self) -> bool:
    return self._start is not None

  def start(self, restored_step: int, restored_elapsed_s: float) -> None:
    """Starts the clock after a (possible) restore at `restored_step`."""
    self.record.truncate_after(restored_step)
    self.record.status = 'running'
    self._offset_s = max(float(restored_elapsed_s),
                         self.record.last_elapsed_s())
    self._start = self._clock()

  def elapsed_s(self) -> float:
    if self._start is None:
      return self._offset_s
    return self._offset_s + (self._clock() - self._start)

  def record_train_loop(self, images: int, seconds: float) -> None:
    self.record.add_train_loop(images, seconds)
    self.record.elapsed_s = max(self.record.elapsed_s, self.elapsed_s())

  def record_eval(self, step: int, top1: float, top5: Optional[float],
                  loss: Optional[float]) -> Dict[str, float]:
    """Adds an evaluation; returns the scalars to log next to it."""
    record = self.record.add_eval(step, self.elapsed_s(), top1, top5, loss)
    peak = self.record.peak
    self.write()
    return {'elapsed_s': record.elapsed_s, 'epoch': record.epoch,
            'peak_top1': peak.top1, 'time_to_peak_s': peak.elapsed_s}

  def finish(self, completed: bool) -> None:
    """Final write; `completed` says whether training reached its end."""
    self.record.elapsed_s = max(self.record.elapsed_s, self.elapsed_s())
    self.record.status = 'finished' if completed else 'running'
    self.write()

  def write(self) -> Optional[str]:
    if not self.model_dir:
      return None
    return write_summary(self.record, self.model_dir)
