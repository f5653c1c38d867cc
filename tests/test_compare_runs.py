"""compare_runs: the Table-2-style table, the plot, and user errors."""
import csv
import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from official_ext.tools import compare_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _evals(steps_per_epoch, seconds_per_step, top1s, every=56):
  return [{'step': every * (i + 1),
           'epoch': round(every * (i + 1) / steps_per_epoch, 2),
           'elapsed_s': round(every * (i + 1) * seconds_per_step + 3.1, 1),
           'top1': top1, 'top5': min(1.0, top1 + 0.3), 'loss': 2.5 - 2 * top1}
          for i, top1 in enumerate(top1s)]


def b0_summary():
  """A finished 4-replica LARS run, as train.py writes it."""
  return {
      'experiment': 'effnet_b0_digits',
      'hparams': {'experiment': 'effnet_b0_digits', 'model': 'efficientnet-b0',
                  'global_batch_size': 128, 'replicas': 4,
                  'optimizer': 'paper_lars', 'lr_per_256': 2.0,
                  'decay': 'polynomial', 'warmup_epochs': 5.0,
                  'bn_group_size': 1, 'precision': 'float32',
                  'train_epochs': 30.0},
      'peak_top1': 0.964, 'time_to_peak_s': 301.5, 'step_at_peak': 280,
      'epoch_at_peak': 24.93, 'images_per_second': 350.2,
      'images_per_ms': 0.3502, 'train_steps': 337, 'steps_per_epoch': 11.23,
      'elapsed_s': 330.0, 'status': 'finished', 'train_images': 43136,
      'train_seconds': 123.2,
      'evals': _evals(11.23, 1.07, [0.5, 0.81, 0.93, 0.951, 0.964, 0.962]),
  }


def rmsprop_summary():
  """A 2-replica RMSProp run still training; some hparams unknown."""
  return {
      'experiment': 'effnet_b0_digits_rmsprop',
      'hparams': {'model': 'efficientnet-b0', 'global_batch_size': 64,
                  'replicas': 2, 'optimizer': 'rmsprop', 'lr_per_256': 0.016,
                  'decay': 'exponential'},
      'peak_top1': 0.8712, 'time_to_peak_s': 3723.9, 'step_at_peak': 224,
      'epoch_at_peak': 9.96, 'images_per_second': 12345.6,
      'images_per_ms': 12.3456, 'train_steps': 675, 'steps_per_epoch': 22.47,
      'elapsed_s': 3800.0, 'status': 'running',
      'evals': _evals(22.47, 16.6, [0.42, 0.77, 0.85, 0.8712]),
  }


def write_run(parent, name, summary):
  run_dir = parent / name
  run_dir.mkdir(parents=True)
  (run_dir / 'summary.json').write_text(json.dumps(summary, indent=2))
  return run_dir


def paper_summary(target_reached=True):
  """A finished run of Table 2's 65k row (paper top-1 0.830)."""
  top1s = [0.61, 0.79, 0.8299999833106995 if target_reached else 0.826,
           0.8312 if target_reached else 0.8281]
  evals = _evals(19.6, 0.56, top1s, every=1715)
  peak = max(evals, key=lambda e: e['top1'])
  reached = next((e for e in evals if e['top1'] >= 0.83 - 1e-6), None)
  return {
      'experiment': 'effnet_b5_lars_65k',
      'hparams': {'model': 'efficientnet-b5', 'global_batch_size': 65536,
                  'replicas': 1024, 'optimizer': 'paper_lars',
                  'lr_per_256': 0.081, 'decay': 'polynomial',
                  'warmup_epochs': 43.0},
      'peak_top1': peak['top1'], 'time_to_peak_s': peak['elapsed_s'],
      'paper_top1': 0.83, 'paper_top1_reached': reached is not None,
      'time_to_paper_top1_s': reached['elapsed_s'] if reached else None,
      'step_at_paper_top1': reached['step'] if reached else None,
      'images_per_ms': 77.4, 'status': 'finished', 'evals': evals,
  }


@pytest.fixture
def two_runs(tmp_path):
  return [write_run(tmp_path, 'b0_lars', b0_summary()),
          write_run(tmp_path, 'b0_rmsprop', rmsprop_summary())]


def parse_table(text):
  """Markdown table -> (headers, rows of stripped cells)."""
  lines = [l for l in text.splitlines() if l.startswith('|')]
  cells = [[c.strip() for c in l.strip().strip('|').split('|')]
           for l in lines]
  assert set(''.join(cells[1])) <= set('-:'), lines[1]  # the rule line
  return cells[0], cells[2:]


def run_cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'official_ext.tools.compare_runs', *map(str, args)],
      capture_output=True, text=True, timeout=120, cwd=ROOT)


def assert_user_error(result, *fragments):
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  for fragment in fragments:
    assert fragment in lines[0]


# ----------------------------------------------------------------------------
# Table.
# ----------------------------------------------------------------------------


def test_table_has_one_row_per_run_in_order(two_runs):
  runs = compare_runs.load_runs([str(d) for d in two_runs])
  headers, rows = parse_table(compare_runs.format_table(runs))
  assert headers == ['run', 'model', 'replicas', 'global batch', 'optimizer',
                     'LR per 256', 'decay', 'warmup (epochs)', 'peak top-1',
                     'time to peak', 'images/ms', 'paper top-1',
                     'time to paper top-1']
  assert len(rows) == 2
  lars = dict(zip(headers, rows[0]))
  assert lars == {
      'run': 'b0_lars', 'model': 'efficientnet-b0', 'replicas': '4',
      'global batch': '128', 'optimizer': 'paper_lars', 'LR per 256': '2',
      'decay': 'polynomial', 'warmup (epochs)': '5', 'peak top-1': '96.4%',
      'time to peak': '5m01s (301 s)', 'images/ms': '0.3502',
      'paper top-1': '-', 'time to paper top-1': '-'}  # not a paper row
  rmsprop = dict(zip(headers, rows[1]))
  assert rmsprop['run'] == 'b0_rmsprop'
  assert rmsprop['LR per 256'] == '0.016'
  assert rmsprop['warmup (epochs)'] == '-'  # missing hparam
  assert rmsprop['peak top-1'] == '87.1%'
  assert rmsprop['time to peak'] == '1h02m03s (3723 s)'
  assert rmsprop['images/ms'] == '12.35'


def test_cli_prints_table_and_running_note(two_runs):
  result = run_cli(*reversed(two_runs))
  assert result.returncode == 0, result.stderr
  _, rows = parse_table(result.stdout)
  assert [r[0] for r in rows] == ['b0_rmsprop', 'b0_lars']  # order given
  assert 'note: b0_rmsprop: still running' in result.stdout
  assert 'b0_lars: still' not in result.stdout


def test_no_eval_yet_prints_dashes(tmp_path):
  summary = dict(b0_summary(), peak_top1=None, time_to_peak_s=None,
                 step_at_peak=None, epoch_at_peak=None, images_per_second=None,
                 images_per_ms=None, status='running', evals=[])
  summary['hparams'] = {'model': 'efficientnet-b0'}
  summary['unknown_future_key'] = {'fine': True}
  run = write_run(tmp_path, 'fresh', summary)
  headers, rows = parse_table(compare_runs.format_table(
      compare_runs.load_runs([str(run)])))
  row = dict(zip(headers, rows[0]))
  assert row['model'] == 'efficientnet-b0'
  for column in ('replicas', 'global batch', 'optimizer', 'peak top-1',
                 'time to peak', 'images/ms'):
    assert row[column] == '-', column
  notes = compare_runs.format_notes([('fresh', summary)])
  assert notes == 'note: fresh: no evaluation yet'


def test_paper_rows_show_the_time_to_the_papers_top1(tmp_path):
  runs = compare_runs.load_runs([
      str(write_run(tmp_path, 'b5_65k', paper_summary())),
      str(write_run(tmp_path, 'b5_65k_short', paper_summary(False)))])
  headers, rows = parse_table(compare_runs.format_table(runs))
  reached, missed = (dict(zip(headers, r)) for r in rows)
  assert reached['paper top-1'] == missed['paper top-1'] == '83.0%'
  # The third evaluation, step 5145 at 0.56 s per step (+3.1 s).
  assert reached['time to paper top-1'] == '48m04s (2884 s)'
  assert missed['time to paper top-1'] == 'not reached'


def test_parent_directory_lists_every_run_under_it(tmp_path):
  sweep = tmp_path / 'sweep'
  write_run(sweep, 'b_rmsprop', rmsprop_summary())
  write_run(sweep, 'a_lars', b0_summary())
  write_run(sweep / 'paper', 'b5_65k', paper_summary())
  # Not a run: no summary.json. Inside a run: not searched.
  (sweep / 'logs').mkdir()
  write_run(sweep / 'a_lars', 'nested', b0_summary())
  result = run_cli(sweep)
  assert result.returncode == 0, result.stderr
  _, rows = parse_table(result.stdout)
  assert [r[0] for r in rows] == ['a_lars', 'b_rmsprop', 'b5_65k']
  # A run named both directly and through its parent is listed once.
  result = run_cli(sweep / 'b_rmsprop', sweep)
  _, rows = parse_table(result.stdout)
  assert [r[0] for r in rows] == ['b_rmsprop', 'a_lars', 'b5_65k']


def test_parent_without_runs_is_a_user_error(tmp_path):
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  assert_user_error(run_cli(tmp_path / 'empty'),
                    'nor in any directory under', 'a directory of them')


def test_csv_has_raw_values_and_notes_on_stderr(two_runs, tmp_path):
  paper = write_run(tmp_path, 'b5_65k', paper_summary())
  result = run_cli(*two_runs, paper, '--format=csv')
  assert result.returncode == 0, result.stderr
  rows = list(csv.DictReader(io.StringIO(result.stdout)))
  assert [r['run'] for r in rows] == ['b0_lars', 'b0_rmsprop', 'b5_65k']
  lars, rmsprop, b5 = rows
  assert float(lars['peak_top1']) == 0.964
  assert float(lars['time_to_peak_s']) == 301.5
  assert float(lars['images_per_ms']) == 0.3502
  assert lars['global_batch'] == '128' and lars['status'] == 'finished'
  assert lars['paper_top1'] == '' and lars['time_to_paper_top1_s'] == ''
  assert rmsprop['warmup_epochs'] == '' and rmsprop['status'] == 'running'
  assert float(b5['paper_top1']) == 0.83 and b5['paper_top1_reached'] == 'True'
  assert float(b5['time_to_paper_top1_s']) == 2884.3
  assert 'note: b0_rmsprop: still running' in result.stderr


def test_plain_table_aligns_the_same_cells(two_runs):
  result = run_cli(*two_runs, '--format=table')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert '|' not in result.stdout
  assert lines[0].split()[:3] == ['run', 'model', 'replicas']
  assert lines[1].split()[:4] == ['b0_lars', 'efficientnet-b0', '4', '128']
  assert '96.4%' in lines[1] and '5m01s (301 s)' in lines[1]
  # Right-aligned numbers end in the same column.
  assert lines[1].index('96.4%') == lines[2].index('87.1%')


def test_unknown_format_is_a_usage_error(two_runs):
  result = run_cli(*two_runs, '--format=xlsx')
  assert result.returncode == 2
  assert "invalid choice: 'xlsx'" in result.stderr
  assert 'Traceback' not in result.stderr


def test_clashing_basenames_use_paths(tmp_path):
  a = write_run(tmp_path / 'sweep_a', 'run', b0_summary())
  b = write_run(tmp_path / 'sweep_b', 'run', b0_summary())
  c = write_run(tmp_path, 'other', b0_summary())
  assert compare_runs.run_names([str(a), str(b) + os.sep, str(c)]) == [
      str(a), str(b), 'other']


@pytest.mark.parametrize('seconds, expected', [
    (301.5, '5m01s (301 s)'),
    (42.9, '0m42s (42 s)'),
    (60, '1m00s (60 s)'),
    (3723.0, '1h02m03s (3723 s)'),
    (0, '0m00s (0 s)'),
])
def test_format_duration(seconds, expected):
  assert compare_runs.format_duration(seconds) == expected


# ----------------------------------------------------------------------------
# Plot.
# ----------------------------------------------------------------------------


def test_plot_writes_a_wide_png(two_runs, tmp_path):
  path = tmp_path / 'plots' / 'nested' / 'compare.png'  # parents created
  result = run_cli(*two_runs, '--plot', path)
  assert result.returncode == 0, result.stderr
  assert f'wrote {path}' in result.stdout
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == 'PNG'
    width, height = image.size
  assert width > height > 0
  # Only the PNG is left behind: the temp file was renamed into place.
  assert os.listdir(path.parent) == ['compare.png']


# ----------------------------------------------------------------------------
# User errors.
# ----------------------------------------------------------------------------


def test_missing_dir_is_a_user_error(tmp_path, two_runs):
  missing = tmp_path / 'no_such_run'
  assert_user_error(run_cli(two_runs[0], missing), str(missing),
                    'does not exist', 'summary.json')


def test_missing_summary_is_a_user_error(tmp_path):
  empty = tmp_path / 'empty_model_dir'
  empty.mkdir()
  assert_user_error(run_cli(empty), str(empty / 'summary.json'),
                    'not found', 'model_dir written by train.py')


def test_corrupt_json_is_a_user_error(tmp_path):
  run = tmp_path / 'half_written'
  run.mkdir()
  (run / 'summary.json').write_text('{"experiment": "effnet_b0_digits", "ev')
  assert_user_error(run_cli(run), str(run / 'summary.json'), 'JSON')


def test_json_without_evals_is_a_user_error(tmp_path):
  run = write_run(tmp_path, 'not_a_summary', {'experiment': 'x'})
  assert_user_error(run_cli(run), str(run / 'summary.json'), '"evals"')


def test_plot_must_be_png(two_runs, tmp_path):
  target = tmp_path / 'compare.jpg'
  assert_user_error(run_cli(*two_runs, '--plot', target), '.png')
  assert not target.exists()


def test_no_run_dirs_is_a_usage_error():
  result = run_cli()
  assert result.returncode == 2
  assert 'usage:' in result.stderr and 'Traceback' not in result.stderr


def test_two_real_runs_side_by_side(short_run_dirs, tmp_path):
  """Two real train.py runs that differ in LR per 256: both rows, one PNG."""
  png = tmp_path / 'plots' / 'top1.png'
  result = run_cli(short_run_dirs['lr2'], short_run_dirs['lr1'],
                   '--plot', str(png))
  assert result.returncode == 0, result.stderr
  headers, cells = parse_table(result.stdout)
  rows = [dict(zip(headers, row)) for row in cells]
  assert [row['run'] for row in rows] == ['lr2', 'lr1']
  assert [row['LR per 256'] for row in rows] == ['2', '1']
  for row in rows:
    assert row['model'] == 'efficientnet-b0' and row['replicas'] == '2'
    assert row['global batch'] == '16' and row['optimizer'] == 'paper_lars'
    assert row['peak top-1'].endswith('%') and ' s)' in row['time to peak']
    assert float(row['images/ms']) > 0
  with Image.open(png) as image:
    image.verify()
