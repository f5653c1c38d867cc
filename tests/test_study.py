"""The Table 2 miniature: its cells follow the paper's rules, and the study
runner runs, skips, resumes and reports them."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from experiments import table2_digits
from official.core import exp_factory
from official_ext.tools import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OPTIMIZER_TYPES = {'lars': 'paper_lars', 'rmsprop': 'paper_rmsprop',
                   'lamb': 'lamb', 'sm3': 'sm3'}


@pytest.mark.parametrize('optimizer', table2_digits.OPTIMIZERS)
def test_cells_scale_one_lr_per_256_over_a_fixed_epoch_budget(optimizer):
  schedules = []
  for batch in table2_digits.BATCHES:
    params = exp_factory.get_exp_config(
        table2_digits.cell_name(optimizer, batch))
    opt = params.trainer.optimizer_config
    assert opt.optimizer.type == OPTIMIZER_TYPES[optimizer]
    assert opt.learning_rate.type == (
        'scaled_exponential' if optimizer == 'rmsprop' else
        'scaled_polynomial')
    assert params.task.train_data.global_batch_size == batch
    assert params.task.model.input_size == [table2_digits.IMAGE_SIZE] * 2 + [3]
    assert params.runtime.deterministic
    schedule = opt.learning_rate.get()
    assert schedule.global_batch_size == batch
    assert params.trainer.train_epochs == table2_digits.TRAIN_EPOCHS
    assert schedule.train_steps == params.trainer.train_steps
    schedules.append(schedule)
  # One LR per 256 and one warmup in epochs for every batch: only the
  # scaling (batch / 256) and the step counts differ.
  assert {s.lr_per_256 for s in schedules} == {
      table2_digits.LR_PER_256[optimizer]}
  assert {s.warmup_epochs for s in schedules} == {table2_digits.WARMUP_EPOCHS}
  steps = [s.train_steps for s in schedules]
  assert steps == sorted(steps, reverse=True) and steps[0] > 8 * steps[-1]


def test_sweep_cells_run_at_the_smallest_batch_with_their_lr():
  cells = table2_digits.STUDIES['table2_digits_lr_sweep'].cells
  assert {c.global_batch_size for c in cells} == {table2_digits.BATCHES[0]}
  for optimizer in table2_digits.OPTIMIZERS:
    mine = [c for c in cells if c.optimizer == optimizer]
    assert [c.params_override.split('=')[1] for c in mine] == [
        repr(lr) for lr in table2_digits.LR_SWEEP[optimizer]]
    # The LR chosen for the study is one the sweep tried.
    assert table2_digits.LR_PER_256[optimizer] in (
        table2_digits.LR_SWEEP[optimizer])


# A stand-in for train.py: writes the summary.json train.py writes, with a
# peak top-1 that falls with the batch, and records each call.
FAKE_TRAIN = textwrap.dedent('''
    import json, os, re, sys
    args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
    with open(os.environ['FAKE_CALLS'], 'a') as f:
      f.write(args['experiment'] + ' ' + args['params_override'] + '\\n')
    if args['experiment'] == os.environ.get('FAKE_FAIL'):
      print('error: simulated failure of ' + args['experiment'])
      sys.exit(1)
    batch = int(re.search(r'_b(\\d+)$', args['experiment']).group(1))
    seed = int(re.search(r'runtime.seed=(\\d+)', args['params_override'])
               .group(1))
    peak = 0.99 - batch / 10000 - seed / 1000
    os.makedirs(args['model_dir'], exist_ok=True)
    summary = {
        'evals': [{'step': 5, 'epoch': 20.0, 'elapsed_s': 3.0, 'top1': peak}],
        'peak_top1': peak, 'time_to_peak_s': 3.0, 'elapsed_s': 3.0,
        'status': 'finished',
        'hparams': {'global_batch_size': batch, 'optimizer': 'x',
                    'lr_per_256': 2.0, 'decay': 'polynomial',
                    'warmup_epochs': 2.0, 'train_epochs': 20.0}}
    with open(os.path.join(args['model_dir'], 'summary.json'), 'w') as f:
      json.dump(summary, f)
''')


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
  script = tmp_path / 'fake_train.py'
  script.write_text(FAKE_TRAIN)
  calls = tmp_path / 'calls.txt'
  calls.write_text('')
  monkeypatch.setenv('FAKE_CALLS', str(calls))

  def read_calls():
    return calls.read_text().splitlines()
  return [sys.executable, str(script)], read_calls


def test_quick_study_runs_reports_and_skips_finished_runs_on_rerun(
    tmp_path, fake_train, capsys):
  command, calls = fake_train
  out = tmp_path / 'study'
  argv = ['--study=table2_digits', '--quick', f'--out={out}']
  assert study.main(argv, train_command=command) == 0
  printed = capsys.readouterr().out
  quick = table2_digits.STUDIES['table2_digits_quick']
  assert len(quick.cells) == 4  # 2 optimizers x 2 batches
  assert {c.optimizer for c in quick.cells} == {'rmsprop', 'lars'}
  assert len(calls()) == 4 * len(quick.seeds)
  assert '[1/4]' in printed and 'ETA' in printed and '[4/4]' in printed
  # Table 2's shape, and every run's row from compare_runs.
  assert '| optimizer |' in printed and 'peak top-1 (mean)' in printed
  assert '| run ' in printed and 'table2_digits_lars_b1024/seed1' in printed
  results = json.loads((out / study.RESULTS_FILE).read_text())
  by_cell = {c['cell']: c for c in results['cells']}
  assert by_cell['table2_digits_lars_b64']['mean'] == pytest.approx(
      0.99 - 64 / 10000 - 1 / 1000)
  with Image.open(out / study.PLOT_FILE) as image:
    assert image.format == 'PNG' and image.size[0] > 300
  assert (out / study.TABLE_FILE).read_text().startswith('## Study')

  # Rerun: nothing is trained again.
  assert study.main(argv, train_command=command) == 0
  assert len(calls()) == 4
  assert '4 of 4 runs already finished' in capsys.readouterr().out


def test_failed_run_is_reported_others_run_and_rerun_retries_it_only(
    tmp_path, fake_train, monkeypatch, capsys):
  command, calls = fake_train
  out = tmp_path / 'study'
  argv = ['--study=table2_digits', '--quick', f'--out={out}']
  monkeypatch.setenv('FAKE_FAIL', 'table2_digits_rmsprop_b1024')
  assert study.main(argv, train_command=command) == 1
  captured = capsys.readouterr()
  assert 'FAILED' in captured.out
  assert 'simulated failure of table2_digits_rmsprop_b1024' in captured.out
  assert 'table2_digits_rmsprop_b1024/seed1' in captured.err
  assert len(calls()) == 4
  monkeypatch.delenv('FAKE_FAIL')
  assert study.main(argv, train_command=command) == 0
  assert calls()[4:] == [
      'table2_digits_rmsprop_b1024 runtime.seed=1']


def test_quick_runs_are_shared_with_the_full_study(tmp_path, fake_train,
                                                   capsys):
  command, calls = fake_train
  out = tmp_path / 'study'
  assert study.main(['--study=table2_digits', '--quick', f'--out={out}'],
                    train_command=command) == 0
  assert study.main(['--study=table2_digits', f'--out={out}',
                     '--only=_b(64|1024)$'], train_command=command) == 0
  full = table2_digits.STUDIES['table2_digits']
  # The quick runs (seed 1) are reused; the full study adds the other
  # optimizers and seeds at those two batches.
  assert len(calls()) == 4 + (8 * len(full.seeds) - 4)
  assert '4 of 16 runs already finished' in capsys.readouterr().out


def test_dry_run_prints_one_train_command_per_run(capsys):
  assert study.main(['--study=table2_digits', '--out=/nonexistent/x',
                     '--dry_run']) == 0
  lines = capsys.readouterr().out.splitlines()
  full = table2_digits.STUDIES['table2_digits']
  assert len(lines) == len(full.cells) * len(full.seeds)
  assert lines[0].endswith(
      '--experiment=table2_digits_rmsprop_b64 '
      '--model_dir=/nonexistent/x/table2_digits_rmsprop_b64/seed1 '
      '--params_override=runtime.seed=1')
  assert not os.path.exists('/nonexistent/x')


@pytest.mark.parametrize('args, message', [
    (['--study=table3'], "unknown --study='table3'; use one of "),
    (['--study=table2_digits_lr_sweep', '--quick'],
     "has no quick variant"),
    (['--study=table2_digits', '--only=nothing_matches'],
     'matches no cell'),
    (['--study=table2_digits', '--only=('], 'is not a regular expression'),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
  assert study.main(args + [f'--out={tmp_path / "s"}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and message in err[0]


def test_out_dir_of_other_files_is_refused_and_left_alone(tmp_path, capsys):
  out = tmp_path / 'busy'
  out.mkdir()
  (out / 'notes.txt').write_text('keep me')
  assert study.main(['--study=table2_digits', f'--out={out}']) == 2
  assert 'non-empty directory' in capsys.readouterr().err
  assert os.listdir(out) == ['notes.txt']


@pytest.mark.slow  # ~40 s: one real cell through train.py, a few steps.
def test_one_real_cell_trains_through_train_py(tmp_path):
  out = tmp_path / 'study'
  result = subprocess.run(
      [sys.executable, '-m', 'official_ext.tools.study',
       '--study=table2_digits', '--quick', '--only=lars_b1024',
       f'--out={out}', '--params_override=trainer.train_epochs=4'],
      capture_output=True, text=True, timeout=900, cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  summary = json.loads(
      (out / 'table2_digits_lars_b1024' / 'seed1' / 'summary.json').read_text())
  assert summary['status'] == 'finished'
  assert summary['hparams']['global_batch_size'] == 1024
  assert summary['hparams']['train_epochs'] == 4
  assert '| lars ' in result.stdout and (out / study.PLOT_FILE).is_file()


def test_lr_sweep_plot_puts_lr_per_256_on_its_x_axis(tmp_path):
  # Every sweep cell has the same batch: points are placed (and sorted) by LR.
  cells = [
      {'optimizer': 'lars', 'global_batch_size': 64, 'mean': m, 'min': m,
       'max': m, 'hparams': {'lr_per_256': lr}}
      for lr, m in ((8.0, 0.9), (0.5, 0.4), (2.0, 0.8))]
  path = study.plot(cells, str(tmp_path / 'sweep.png'), x_axis='lr_per_256')
  with Image.open(path) as image:
    assert image.format == 'PNG'
