"""Time-to-accuracy record: peak, clock carry-over, summary.json of real runs."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from official_ext.core import time_to_accuracy as tta
from tests import short_runs

SUMMARY_KEYS = {'experiment', 'peak_top1', 'time_to_peak_s', 'step_at_peak',
                'epoch_at_peak', 'images_per_second', 'images_per_ms',
                'evals'}
EVAL_KEYS = {'step', 'epoch', 'elapsed_s', 'top1', 'top5', 'loss'}


class FakeClock:

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def make_timer(model_dir=None):
  clock = FakeClock()
  record = tta.RunRecord('exp', {'model': 'efficientnet-b0'},
                         train_steps=100, steps_per_epoch=10.0)
  return tta.TimeToAccuracy(record, model_dir, clock=clock), clock


def test_peak_is_the_first_eval_reaching_the_highest_top1(tmp_path):
  timer, clock = make_timer(str(tmp_path))
  timer.start(restored_step=0, restored_elapsed_s=0.0)
  for step, seconds, top1 in ((20, 50, 0.5), (40, 90, 0.7), (60, 130, 0.7),
                              (80, 170, 0.6)):
    clock.now = 1000.0 + seconds
    scalars = timer.record_eval(step, top1, 0.9, 1.5)
  assert scalars['peak_top1'] == 0.7 and scalars['time_to_peak_s'] == 90
  assert scalars['elapsed_s'] == 170 and scalars['epoch'] == 8.0
  with open(tmp_path / tta.SUMMARY_FILE) as f:
    summary = json.load(f)
  assert summary['peak_top1'] == 0.7
  assert summary['time_to_peak_s'] == 90.0
  assert summary['step_at_peak'] == 40 and summary['epoch_at_peak'] == 4.0
  assert [e['elapsed_s'] for e in summary['evals']] == [50, 90, 130, 170]


def test_throughput_is_images_over_train_loop_seconds():
  timer, _ = make_timer()
  timer.start(0, 0.0)
  timer.record_train_loop(images=1000, seconds=2.0)
  timer.record_train_loop(images=3000, seconds=2.0)
  summary = timer.record.to_json()
  assert summary['images_per_second'] == 1000.0
  assert summary['images_per_ms'] == 1.0
  assert summary['peak_top1'] is None and summary['evals'] == []


def test_restart_drops_later_evals_and_carries_the_clock_on(tmp_path):
  timer, clock = make_timer(str(tmp_path))
  timer.start(0, 0.0)
  for step, seconds, top1 in ((20, 50, 0.5), (40, 90, 0.8)):
    clock.now = 1000.0 + seconds
    timer.record_eval(step, top1, None, None)
  # Crash; the newest checkpoint is from step 30, saved at 70 s.
  resumed, clock = make_timer(str(tmp_path))
  resumed.record = tta.read_summary(str(tmp_path))
  clock.now = 5000.0  # The new process's clock has its own origin.
  resumed.start(restored_step=30, restored_elapsed_s=70.0)
  assert [e.step for e in resumed.record.evals] == [20]
  clock.now = 5040.0
  scalars = resumed.record_eval(40, 0.75, None, None)
  assert scalars['elapsed_s'] == 110.0  # 70 s before the crash + 40 s.
  assert scalars['peak_top1'] == 0.75 and scalars['time_to_peak_s'] == 110.0


def test_restart_never_moves_the_clock_back_past_a_kept_eval():
  timer, clock = make_timer()
  timer.start(0, 0.0)
  clock.now = 1080.0
  timer.record_eval(20, 0.5, None, None)
  # The checkpoint at step 20 was saved before that eval ran (at 60 s).
  timer.start(restored_step=20, restored_elapsed_s=60.0)
  assert timer.elapsed_s() == 80.0


def test_summary_is_replaced_atomically(tmp_path):
  timer, clock = make_timer(str(tmp_path))
  timer.start(0, 0.0)
  clock.now = 1010.0
  timer.record_eval(10, 0.25, None, None)
  assert sorted(os.listdir(tmp_path)) == [tta.SUMMARY_FILE]
  (tmp_path / tta.SUMMARY_FILE).write_text('{not json')
  with pytest.raises(ValueError, match='not a summary'):
    tta.read_summary(str(tmp_path))


# -- Real runs (tests/short_runs.py) ------------------------------------------


def load_summary(model_dir):
  with open(os.path.join(model_dir, tta.SUMMARY_FILE)) as f:
    return json.load(f)


def check_consistent(summary):
  assert SUMMARY_KEYS <= set(summary)
  evals = summary['evals']
  assert evals and all(set(e) == EVAL_KEYS for e in evals)
  assert [e['step'] for e in evals] == list(short_runs.EVAL_STEPS)
  elapsed = [e['elapsed_s'] for e in evals]
  assert 0 < elapsed[0] < elapsed[1]
  best = max(e['top1'] for e in evals)
  peak = next(e for e in evals if e['top1'] == best)
  assert summary['peak_top1'] == best
  assert summary['time_to_peak_s'] == peak['elapsed_s']
  assert summary['step_at_peak'] == peak['step']
  assert summary['epoch_at_peak'] == pytest.approx(
      peak['step'] / summary['steps_per_epoch'])
  assert summary['images_per_second'] > 0
  assert summary['images_per_ms'] == pytest.approx(
      summary['images_per_second'] / 1000)
  for e in evals:
    assert 0 <= e['top1'] <= e['top5'] <= 1 and e['loss'] > 0


def paper_row_record(target=0.830):
  """A record of a Table 2 row whose paper top-1 is `target`."""
  record = tta.RunRecord('effnet_b5_lars_65k', {}, train_steps=6860,
                         steps_per_epoch=19.6, paper_top1=target)
  # Top-1 as evaluation computes it: float32 correct / 50,000.
  for step, elapsed_s, correct in ((1960, 1500.0, 40100), (3920, 2900.0, 41500),
                                   (5880, 3860.0, 41600), (6860, 4400.0, 41550)):
    record.add_eval(step, elapsed_s, float(np.float32(correct) /
                                           np.float32(50000)))
  return record


def test_time_to_paper_top1_is_the_first_eval_reaching_it():
  summary = paper_row_record().to_json()
  # 41,500 / 50,000 is 0.83 exactly, 0.82999998 in float32: reached.
  assert summary['paper_top1'] == 0.830
  assert summary['paper_top1_reached'] is True
  assert summary['time_to_paper_top1_s'] == 2900.0
  assert summary['step_at_paper_top1'] == 3920
  assert summary['epoch_at_paper_top1'] == pytest.approx(3920 / 19.6)
  # The peak is a later, higher evaluation.
  assert summary['time_to_peak_s'] == 3860.0


def test_paper_top1_not_reached():
  summary = paper_row_record(target=0.8325).to_json()
  assert summary['paper_top1_reached'] is False
  assert summary['time_to_paper_top1_s'] is None
  assert summary['step_at_paper_top1'] is None


def test_paper_top1_survives_summary_round_trip(tmp_path):
  tta.write_summary(paper_row_record(), str(tmp_path))
  record = tta.read_summary(str(tmp_path))
  assert record.paper_top1 == 0.830
  assert record.paper_target.step == 3920


def test_paper_top1_of_each_table2_experiment():
  import experiments  # pylint: disable=g-import-not-at-top,unused-import
  from experiments import paper_table2  # pylint: disable=g-import-not-at-top
  from official_ext.core import experiment_list  # pylint: disable=g-import-not-at-top
  assert len(paper_table2.TABLE_2) == 11
  for row in paper_table2.TABLE_2:
    assert experiment_list.paper_top1(row.name) == row.paper_peak_top1
  assert experiment_list.paper_top1('effnet_b5_lars_65k') == 0.830
  assert experiment_list.paper_top1('effnet_b2_lars_32k') == 0.797
  assert experiment_list.paper_top1(short_runs.EXPERIMENT) is None


def tensor_tags(run_dir):
  accumulator = event_accumulator.EventAccumulator(run_dir)
  accumulator.Reload()
  return set(accumulator.Tags()['tensors'])


def test_real_run_writes_a_consistent_summary(short_run):
  summary = load_summary(short_run.model_dir)
  check_consistent(summary)
  assert summary['experiment'] == short_runs.EXPERIMENT
  assert summary['status'] == 'finished'
  # The demo is not a row of the paper's Table 2: no target.
  assert summary['paper_top1'] is None
  assert summary['paper_top1_reached'] is None
  assert summary['time_to_paper_top1_s'] is None
  hparams = summary['hparams']
  assert hparams['lr_per_256'] == 2.0 and hparams['replicas'] == 2
  assert hparams['global_batch_size'] == 16
  assert hparams['optimizer'] == 'paper_lars'


def test_real_run_writes_tensorboard_scalars_and_hparams(short_run):
  model_dir = short_run.model_dir
  assert {'_hparams_/experiment', '_hparams_/session_start_info'} <= (
      tensor_tags(model_dir))
  assert {'images_per_second', 'images_per_ms'} <= tensor_tags(
      os.path.join(model_dir, 'train'))
  # 4 classes: the top-5 metric is top-4.
  assert {'top_1_accuracy', 'top_4_accuracy', 'validation_loss', 'elapsed_s',
          'peak_top1', 'time_to_peak_s'} <= tensor_tags(
              os.path.join(model_dir, 'validation'))


def test_restart_from_an_earlier_checkpoint_carries_the_clock_on(
    short_run_dirs, tmp_path):
  model_dir = str(tmp_path / 'resumed')
  shutil.copytree(short_run_dirs['lr2'], model_dir)
  before = load_summary(model_dir)
  # Roll back to the step-2 checkpoint, as if the run died after it.
  first = os.path.join(model_dir, 'ckpt-2')
  assert tf.io.gfile.exists(first + '.index'), os.listdir(model_dir)
  saved_clock = tf.train.load_variable(
      first, 'time_to_accuracy_s/.ATTRIBUTES/VARIABLE_VALUE')
  for name in os.listdir(model_dir):
    if name.startswith('ckpt-') and not name.startswith('ckpt-2.'):
      os.remove(os.path.join(model_dir, name))
  with open(os.path.join(model_dir, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: "ckpt-2"\n'
            'all_model_checkpoint_paths: "ckpt-2"\n')

  result = short_runs.launch(model_dir, short_run_dirs['fixture'])
  assert result.returncode == 0, result.stderr[-3000:]
  after = load_summary(model_dir)
  check_consistent(after)
  assert after['evals'][0] == before['evals'][0]  # Kept, not redone.
  # The redone last eval is timed on the carried-over clock.
  assert after['evals'][1]['elapsed_s'] > max(before['evals'][0]['elapsed_s'],
                                              saved_clock)
