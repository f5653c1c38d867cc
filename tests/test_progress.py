"""Progress lines: what each train loop and evaluation prints."""
import io

import numpy as np

from official_ext.core import progress


class _Step:

  def __init__(self, value):
    self.value = value

  def numpy(self):
    return np.int64(self.value)


def _reporter(step=280):
  stream = io.StringIO()
  return progress.ProgressReporter(_Step(step), 337, 128, 11.23,
                                   stream=stream), stream


def test_eval_line_has_top1_top5_peak_and_time_to_peak():
  reporter, stream = _reporter()
  reporter.eval_action({'top_1_accuracy': np.float32(0.964),
                        'top_5_accuracy': np.float32(0.999),
                        'validation_loss': np.float32(0.2),
                        'elapsed_s': 301.5, 'peak_top1': 0.964,
                        'time_to_peak_s': 301.5})
  assert stream.getvalue() == (
      'eval at step 280 | epoch 24.93 | top-1 0.9640 | top-5 0.9990 | '
      'loss 0.2000 | elapsed 5m01s | peak top-1 0.9640 at 5m01s\n')


def test_eval_line_with_fewer_than_five_classes_shows_top_k():
  reporter, stream = _reporter()
  reporter.eval_action({'top_1_accuracy': 0.5, 'top_4_accuracy': 1.0})
  assert '| top-1 0.5000 | top-4 1.0000' in stream.getvalue()


def test_train_line_has_step_epoch_loss_lr_throughput_and_eta():
  reporter, stream = _reporter(step=280)
  reporter.train_action({'training_loss': np.float32(0.31),
                         'learning_rate': np.float32(0.25),
                         'images_per_second': 350.0})
  # ETA: (337 - 280) steps * 128 images / 350 images/s = 20.8 s.
  assert stream.getvalue() == (
      'step 280/337 | epoch 24.93 | loss 0.3100 | lr 0.25 | 350.0 images/s '
      '| 0.3500 images/ms | ETA 0m20s\n')
