r"""Runs a study (a grid of experiments x seeds) and reports it as Table 2.

  python -m official_ext.tools.study --study=table2_digits --out=DIR \
      [--quick] [--only=REGEX] [--params_override=a.b=1,...] [--dry_run]

Studies are declarative data (`experiments.table2_digits.STUDIES`). Each run
is one `train.py` process, `--experiment=CELL --model_dir=DIR/CELL/seedK
--params_override=runtime.seed=K,...`, its output in DIR/logs/. A run whose
summary.json says `finished` is skipped, so rerunning the same command after an
interruption continues where it stopped (an unfinished run resumes from its
last checkpoint). Progress is one line per run with an ETA over the study.

At the end (and with nothing left to run) it prints every run's row (via
`compare_runs`) and a Table-2-shaped summary, one row per optimizer and
global batch with the mean and spread of peak top-1 over seeds, and writes:

  DIR/table.md                 both tables, in markdown
  DIR/results.json             per cell: seeds' peak top-1, mean, min, max
  DIR/peak_top1_vs_batch.png   peak top-1 against global batch (the study's
                               `x_axis`: LR per 256 for the LR sweep), one
                               line per optimizer, error bars from min to max
                               over seeds

`--quick` runs the study's small variant; `--only` keeps the cells whose name
matches REGEX; `--params_override` is added to every run (a changed override
is refused by train.py for a run that already started in DIR); `--dry_run`
prints the commands and runs nothing. Bad arguments print one `error:` line
and exit with status 2; a failed run is reported, the others still run, and
the exit status is 1.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from official_ext.core import native_logs
from official_ext.core import progress
from official_ext.tools import compare_runs

STUDY_FILE = 'study.json'
TABLE_FILE = 'table.md'
RESULTS_FILE = 'results.json'
PLOT_FILE = 'peak_top1_vs_batch.png'


class StudyError(ValueError):
  """A user error: bad study name, output directory or filter."""


def _studies():
  # Imported here: registering the experiments imports TensorFlow (its C++
  # notices silenced first, as train.py does).
  native_logs.quiet_tensorflow_logs()
  from experiments import table2_digits  # pylint: disable=g-import-not-at-top
  return table2_digits.STUDIES, table2_digits.QUICK


def select_study(name: str, quick: bool):
  """(resolved study name, Study) for --study / --quick."""
  studies, quick_variants = _studies()
  if name not in studies:
    raise StudyError(f'unknown --study={name!r}; use one of '
                     f'{", ".join(sorted(studies))}')
  if quick:
    if name not in quick_variants:
      raise StudyError(
          f'--quick: study {name!r} has no quick variant; studies with one: '
          f'{", ".join(sorted(quick_variants))}')
    name = quick_variants[name]
  return name, studies[name]


def select_cells(cells, only: Optional[str]):
  if not only:
    return tuple(cells)
  try:
    pattern = re.compile(only)
  except re.error as e:
    raise StudyError(f'--only={only!r} is not a regular expression ({e})'
                     ) from None
  kept = tuple(c for c in cells if pattern.search(c.name))
  if not kept:
    raise StudyError(f'--only={only!r} matches no cell; cells: '
                     f'{", ".join(c.name for c in cells)}')
  return kept


# ----------------------------------------------------------------------------
# Runs.
# ----------------------------------------------------------------------------


class Run:
  """One (cell, seed): its model_dir, log file and train.py command."""

  def __init__(self, cell, seed: int, out: str, params_override: str,
               train_command: Sequence[str]):
    self.cell = cell
    self.seed = seed
    self.name = f'{cell.name}/seed{seed}'
    self.model_dir = os.path.join(out, cell.name, f'seed{seed}')
    self.log = os.path.join(out, 'logs', f'{cell.name}_seed{seed}.log')
    overrides = [o for o in (f'runtime.seed={seed}', cell.params_override,
                             params_override) if o]
    self.command = list(train_command) + [
        f'--experiment={cell.experiment}', f'--model_dir={self.model_dir}',
        f'--params_override={",".join(overrides)}']

  def summary(self) -> Optional[Dict[str, Any]]:
    try:
      return compare_runs.load_summary(self.model_dir)
    except compare_runs.RunDirError:
      return None

  def finished(self) -> bool:
    summary = self.summary()
    return summary is not None and summary.get('status') == 'finished'


def default_train_command() -> List[str]:
  """This interpreter running the project's train.py."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  script = os.path.join(root, 'train.py')
  if os.path.isfile(script):
    return [sys.executable, script]
  return [sys.executable, '-m', 'train']  # an installed, non-editable copy


def _check_out_dir(out: str, study_name: str) -> None:
  """DIR is new, or holds this same study (never another one's runs)."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise StudyError(f'--out={out} is a file; expected a directory (new, or '
                     'holding this study)')
  path = os.path.join(out, STUDY_FILE)
  if os.path.isfile(path):
    try:
      with open(path, encoding='utf-8') as f:
        recorded = json.load(f).get('study')
    except (OSError, ValueError, AttributeError):
      recorded = None
    studies = {study_name, _base_name(study_name)}
    if recorded is not None and recorded not in studies and (
        _base_name(recorded) not in studies):
      raise StudyError(
          f'--out={out} holds study {recorded!r}, not {study_name!r}; use '
          'another --out')
  elif os.path.isdir(out) and os.listdir(out):
    raise StudyError(
        f'--out={out} is a non-empty directory without {STUDY_FILE}; use a new '
        'directory (nothing in it is overwritten)')


def _base_name(study_name: str) -> str:
  """A quick variant shares its runs with the full study it belongs to."""
  _, quick_variants = _studies()
  for full, quick in quick_variants.items():
    if quick == study_name:
      return full
  return study_name


def _write_json_atomically(path: str, value) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  fd, temp = tempfile.mkstemp(prefix='.study-', dir=directory)
  with os.fdopen(fd, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(temp, path)


def _write_text_atomically(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  fd, temp = tempfile.mkstemp(prefix='.study-', dir=directory)
  with os.fdopen(fd, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(temp, path)


def _last_line(path: str) -> str:
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      lines = [l.strip() for l in f if l.strip()]
  except OSError:
    return ''
  errors = [l for l in lines if l.startswith('error:')]
  return (errors or lines or [''])[-1]


def _peak(summary: Optional[Dict[str, Any]]) -> str:
  peak = (summary or {}).get('peak_top1')
  return f'{100 * peak:.1f}%' if isinstance(peak, (int, float)) else '-'


def execute(runs: Sequence[Run], stream=None) -> List[Run]:
  """Runs every unfinished run in order; returns the runs that failed."""
  stream = stream or sys.stdout
  todo = [r for r in runs if not r.finished()]
  done = len(runs) - len(todo)
  if done:
    print(f'{done} of {len(runs)} runs already finished; skipped',
          file=stream, flush=True)
  failed, durations = [], []
  start = time.monotonic()
  for i, run in enumerate(todo):
    position = f'[{done + i + 1}/{len(runs)}] {run.name}'
    state = 'resuming' if os.path.isdir(run.model_dir) else 'starting'
    print(f'{position}: {state} (log {run.log})', file=stream, flush=True)
    os.makedirs(os.path.dirname(run.log), exist_ok=True)
    run_start = time.monotonic()
    with open(run.log, 'a', encoding='utf-8') as log:
      log.write('$ ' + ' '.join(run.command) + '\n')
      log.flush()
      process = subprocess.Popen(run.command, stdout=log,
                                 stderr=subprocess.STDOUT)
      try:
        returncode = process.wait()
      except KeyboardInterrupt:
        process.terminate()
        process.wait()
        raise
    seconds = time.monotonic() - run_start
    durations.append(seconds)
    left = len(todo) - i - 1
    eta = (f'ETA {progress.format_duration(left * sum(durations) / len(durations))}'
           if left else 'last run')
    elapsed = progress.format_duration(time.monotonic() - start)
    if returncode != 0 or not run.finished():
      failed.append(run)
      why = _last_line(run.log) or f'exit status {returncode}'
      print(f'{position}: FAILED after {progress.format_duration(seconds)}: '
            f'{why}; study {elapsed}, {eta}', file=stream, flush=True)
      continue
    print(f'{position}: peak top-1 {_peak(run.summary())} in '
          f'{progress.format_duration(seconds)}; study {elapsed}, {eta}',
          file=stream, flush=True)
  return failed


# ----------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------


def aggregate(runs: Sequence[Run]) -> List[Dict[str, Any]]:
  """One entry per cell: its seeds' peak top-1 and their mean/min/max."""
  cells: Dict[str, Dict[str, Any]] = {}
  for run in runs:
    summary = run.summary()
    entry = cells.setdefault(run.cell.name, {
        'cell': run.cell.name, 'experiment': run.cell.experiment,
        'optimizer': run.cell.optimizer,
        'global_batch_size': run.cell.global_batch_size,
        'peak_top1': {}, 'hparams': {}, 'seconds': {}})
    if summary is None or summary.get('status') != 'finished':
      continue
    peak = compare_runs._number(summary.get('peak_top1'))  # pylint: disable=protected-access
    if peak is None:
      continue
    entry['peak_top1'][str(run.seed)] = peak
    entry['seconds'][str(run.seed)] = summary.get('elapsed_s')
    entry['hparams'] = summary.get('hparams') or entry['hparams']
  result = []
  for entry in cells.values():
    peaks = list(entry['peak_top1'].values())
    entry['mean'] = sum(peaks) / len(peaks) if peaks else None
    entry['min'] = min(peaks) if peaks else None
    entry['max'] = max(peaks) if peaks else None
    result.append(entry)
  return result


def _pct(value: Optional[float]) -> str:
  return f'{100 * value:.1f}%' if value is not None else '-'


SUMMARY_COLUMNS = ('optimizer', 'decay', 'global batch', 'LR per 256', 'LR',
                   'warmup (epochs)', 'epochs', 'seeds', 'peak top-1 (mean)',
                   'min - max')


def format_summary(cells: Sequence[Dict[str, Any]]) -> str:
  """Table 2's shape: one markdown row per optimizer and global batch."""
  rows = []
  for c in cells:
    h = c['hparams']
    lr_per_256 = h.get('lr_per_256')
    batch = c['global_batch_size']
    lr = (f'{lr_per_256 * batch / 256:.4g}'
          if isinstance(lr_per_256, (int, float)) else '-')
    spread = (f'{_pct(c["min"])} - {_pct(c["max"])}'
              if c['mean'] is not None else '-')
    rows.append([
        c['optimizer'], str(h.get('decay', '-')), str(batch),
        compare_runs._plain(lr_per_256), lr,  # pylint: disable=protected-access
        compare_runs._plain(h.get('warmup_epochs')),  # pylint: disable=protected-access
        compare_runs._plain(h.get('train_epochs')),  # pylint: disable=protected-access
        str(len(c['peak_top1'])), _pct(c['mean']), spread])
  widths = [max([len(h)] + [len(r[i]) for r in rows])
            for i, h in enumerate(SUMMARY_COLUMNS)]
  numeric = [False, False] + [True] * (len(SUMMARY_COLUMNS) - 2)

  def line(cells_, align):
    return '| ' + ' | '.join(
        (v.rjust(w) if align and n else v.ljust(w))
        for v, w, n in zip(cells_, widths, numeric)) + ' |'

  rule = '|' + '|'.join(('-' * (w + 1) + ':') if n else '-' * (w + 2)
                        for w, n in zip(widths, numeric)) + '|'
  return '\n'.join([line(SUMMARY_COLUMNS, False), rule] +
                   [line(r, True) for r in rows])


def _x_value(cell: Dict[str, Any], x_axis: str) -> Optional[float]:
  if x_axis == 'global_batch_size':
    return cell['global_batch_size']
  return compare_runs._number(cell['hparams'].get(x_axis))  # pylint: disable=protected-access


X_LABELS = {'global_batch_size': 'global batch size',
            'lr_per_256': 'LR per 256 examples'}


def plot(cells: Sequence[Dict[str, Any]], path: str,
         x_axis: str = 'global_batch_size') -> str:
  """Peak top-1 against `x_axis`, one line per optimizer, to a PNG.

  Error bars span the seeds' min to max.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # headless hosts
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5))
  try:
    optimizers = []
    for c in cells:
      if c['optimizer'] not in optimizers:
        optimizers.append(c['optimizer'])
    xs_all = set()
    for optimizer in optimizers:
      points = sorted(
          ((_x_value(c, x_axis), c) for c in cells
           if c['optimizer'] == optimizer and c['mean'] is not None and
           _x_value(c, x_axis) is not None), key=lambda point: point[0])
      if not points:
        continue
      xs = [x for x, _ in points]
      xs_all.update(xs)
      means = [100 * c['mean'] for _, c in points]
      below = [100 * (c['mean'] - c['min']) for _, c in points]
      above = [100 * (c['max'] - c['mean']) for _, c in points]
      ax.errorbar(xs, means, yerr=[below, above], marker='o', capsize=4,
                  label=optimizer)
    ax.set_xscale('log', base=2 if x_axis == 'global_batch_size' else 10)
    if x_axis == 'global_batch_size':
      ax.set_xticks(sorted(xs_all))
      ax.set_xticklabels([f'{x:g}' for x in sorted(xs_all)])
    ax.set_xlabel(X_LABELS.get(x_axis, x_axis))
    ax.set_ylabel('peak top-1 (%)')
    ax.set_title(f'Peak top-1 vs {X_LABELS.get(x_axis, x_axis)} '
                 '(bars: min-max over seeds)')
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix='.study-', suffix='.png', dir=directory)
    with os.fdopen(fd, 'wb') as f:
      fig.savefig(f, format='png', dpi=100)
    os.replace(temp, path)
  finally:
    plt.close(fig)
  return path


def report(study_name: str, runs: Sequence[Run], out: str,
           x_axis: str = 'global_batch_size', stream=None) -> None:
  stream = stream or sys.stdout
  loaded = [(r.name, r.summary()) for r in runs]
  loaded = [(name, s) for name, s in loaded if s is not None]
  cells = aggregate(runs)
  per_run = compare_runs.format_table(loaded) if loaded else '(no runs yet)'
  notes = compare_runs.format_notes(loaded) if loaded else ''
  summary = format_summary(cells)
  text = (f'## Study {study_name}: peak top-1 per optimizer and global batch\n'
          f'\n{summary}\n\n## Every run\n\n{per_run}\n')
  if notes:
    text += f'\n{notes}\n'
  print(text, file=stream, flush=True)
  _write_text_atomically(os.path.join(out, TABLE_FILE), text)
  _write_json_atomically(os.path.join(out, RESULTS_FILE),
                         {'study': study_name, 'cells': cells})
  if any(c['mean'] is not None for c in cells):
    written = plot(cells, os.path.join(out, PLOT_FILE), x_axis)
    print(f'wrote {os.path.join(out, TABLE_FILE)}, {written}', file=stream)


# ----------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    self.print_usage(sys.stderr)
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog='python -m official_ext.tools.study',
              description='Run a study of experiments x seeds and report it '
                          'in the shape of Table 2.')
  p.add_argument('--study', required=True, help='e.g. table2_digits')
  p.add_argument('--out', required=True, metavar='DIR',
                 help='the study directory: runs, logs, table and plot')
  p.add_argument('--quick', action='store_true',
                 help="run the study's small variant")
  p.add_argument('--only', metavar='REGEX', default=None,
                 help='only the cells whose name matches REGEX')
  p.add_argument('--params_override', default='',
                 help='added to every run\'s --params_override ("a.b=1,...")')
  p.add_argument('--dry_run', action='store_true',
                 help='print the commands, run nothing')
  return p


def build_runs(study, out: str, only: Optional[str] = None,
               params_override: str = '',
               train_command: Optional[Sequence[str]] = None) -> List[Run]:
  command = list(train_command or default_train_command())
  return [Run(cell, seed, out, params_override, command)
          for cell in select_cells(study.cells, only) for seed in study.seeds]


def main(argv: Optional[Sequence[str]] = None,
         train_command: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  out = os.path.abspath(args.out)
  try:
    study_name, study = select_study(args.study, args.quick)
    runs = build_runs(study, out, args.only, args.params_override,
                      train_command)
    if args.dry_run:
      for run in runs:
        print(' '.join(run.command))
      return 0
    _check_out_dir(out, study_name)
  except StudyError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  os.makedirs(out, exist_ok=True)
  if not os.path.isfile(os.path.join(out, STUDY_FILE)):
    _write_json_atomically(os.path.join(out, STUDY_FILE),
                           {'study': _base_name(study_name)})
  print(f'study {study_name}: {study.description}; {len(runs)} runs in {out}',
        flush=True)
  start = time.monotonic()
  try:
    failed = execute(runs)
  except KeyboardInterrupt:
    print('interrupted; rerun the same command to continue (finished runs '
          'are skipped, the interrupted one resumes)', file=sys.stderr)
    return 130
  print(f'study wall time this invocation: '
        f'{progress.format_duration(time.monotonic() - start)}', flush=True)
  report(study_name, runs, out, study.x_axis)
  if failed:
    print(f'error: {len(failed)} run(s) failed: '
          f'{", ".join(r.name for r in failed)} (logs in '
          f'{os.path.join(out, "logs")})', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
