r"""Compares training runs side by side, in the shape of the paper's Table 2.

  python -m official_ext.tools.compare_runs RUN_OR_PARENT_DIR [...] \
      [--format=markdown|table|csv] [--plot FILE.png]

Each argument is a run directory (a model_dir written by train.py: it holds
`summary.json`, the time-to-accuracy record of
`official_ext.core.time_to_accuracy`) or a directory of runs: every
directory under it holding a summary.json, in name order. One row per run,
in the order given:

  run | model | replicas | global batch | optimizer | LR per 256 | decay |
  warmup (epochs) | peak top-1 | time to peak | images/ms | paper top-1 |
  time to paper top-1

The last two are for runs of the paper's Table 2 experiments: the paper's
peak top-1 for the run's row and the time the run first reached it (MLPerf's
time to target), or "not reached".

--format: `markdown` (default) a GitHub table padded to read; `table` the
same columns aligned as plain text; `csv` unformatted values for
spreadsheets (top-1 as a fraction, times in seconds, plus the status).

Runs are named by their directory's basename (the full path when two
basenames clash). Missing values print as `-`; a run that is still going is
listed in a note under the table (on stderr with csv), since its peak may
still rise.

With --plot, one PNG is written with two panels, top-1 against wall time and
top-1 against epoch, one line per run.

Bad arguments print one `error:` line and exit with status 2.
"""
import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from official_ext.core import progress  # TF-free: keeps this CLI fast.

SUMMARY_FILE = 'summary.json'
EXPECTED = 'a model_dir written by train.py, holding summary.json'
FORMATS = ('markdown', 'table', 'csv')

# (name, summary) pairs, in the order the user gave the run directories.
Runs = Sequence[Tuple[str, Dict[str, Any]]]

# Header, and whether the column is numeric (right-aligned in markdown).
COLUMNS = (
    ('run', False), ('model', False), ('replicas', True),
    ('global batch', True), ('optimizer', False), ('LR per 256', True),
    ('decay', False), ('warmup (epochs)', True), ('peak top-1', True),
    ('time to peak', True), ('images/ms', True), ('paper top-1', True),
    ('time to paper top-1', True),
)
MISSING = '-'
NOT_REACHED = 'not reached'


class RunDirError(ValueError):
  """A run directory the user named cannot be read (a user error)."""


# ----------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------


def load_summary(run_dir: str) -> Dict[str, Any]:
  """Reads RUN_DIR/summary.json; raises RunDirError naming what is wrong."""
  if not os.path.isdir(run_dir):
    what = 'is not a directory' if os.path.exists(run_dir) else (
        'does not exist')
    raise RunDirError(f'{run_dir} {what}; expected {EXPECTED}')
  path = os.path.join(run_dir, SUMMARY_FILE)
  if not os.path.isfile(path):
    raise RunDirError(
        f'{path} not found; expected {EXPECTED} (it appears after the first '
        'evaluation)')
  try:
    with open(path, encoding='utf-8') as f:
      summary = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RunDirError(
        f'{path} is not a readable JSON file ({e}); expected the '
        f'summary.json of {EXPECTED}') from None
  # `evals` is what makes it a time-to-accuracy record rather than any JSON.
  if not isinstance(summary, dict) or not isinstance(
      summary.get('evals'), list):
    raise RunDirError(
        f'{path} has no "evals" list; expected the summary.json of '
        f'{EXPECTED}')
  if not all(isinstance(e, dict) for e in summary['evals']):
    raise RunDirError(
        f'{path}: "evals" must be a list of objects; expected the '
        f'summary.json of {EXPECTED}')
  return summary


def find_runs(path: str) -> List[str]:
  """[path] for a run directory, else the run directories under `path`.

  A run is a directory holding summary.json; the search does not descend
  into runs. A path that is neither a run nor a directory of runs is
  returned as is, for `load_summary` to say what is wrong with it.
  """
  if not os.path.isdir(path) or os.path.isfile(
      os.path.join(path, SUMMARY_FILE)):
    return [path]
  runs = []
  for root, dirs, files in os.walk(path):
    if SUMMARY_FILE in files:
      runs.append(root)
      dirs[:] = []
    else:
      dirs.sort()
  if not runs:
    raise RunDirError(
        f'{os.path.join(path, SUMMARY_FILE)} not found, nor in any directory '
        f'under {path}; expected {EXPECTED}, or a directory of them')
  return runs


def expand_run_dirs(paths: Sequence[str]) -> List[str]:
  """Every run the arguments name, in order, each once."""
  runs, seen = [], set()
  for path in paths:
    for run in find_runs(path):
      key = os.path.realpath(run)
      if key not in seen:
        seen.add(key)
        runs.append(run)
  return runs


def run_names(run_dirs: Sequence[str]) -> List[str]:
  """Basenames, except that runs whose basenames clash keep their path."""
  paths = [os.path.normpath(d) for d in run_dirs]
  bases = [os.path.basename(p) or p for p in paths]
  return [b if bases.count(b) == 1 else p for b, p in zip(bases, paths)]


def load_runs(run_dirs: Sequence[str]) -> List[Tuple[str, Dict[str, Any]]]:
  return [(name, load_summary(d))
          for name, d in zip(run_names(run_dirs), run_dirs)]


# ----------------------------------------------------------------------------
# Table.
# ----------------------------------------------------------------------------


def _number(value) -> Optional[float]:
  """A finite float, or None for null / missing / non-numeric values."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def format_duration(seconds: float) -> str:
  """301.5 -> '5m01s (301 s)': readable, plus exact seconds to compare."""
  return f'{progress.format_duration(seconds)} ({int(max(seconds, 0))} s)'


def _significant(value: float, digits: int = 4) -> str:
  """`digits` significant digits without switching to exponent notation."""
  value = float(f'{value:.{digits}g}')  # rounds 99.996 up to 100.0 first
  if value == 0:
    return '0'
  decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
  return f'{value:.{decimals}f}'


def _plain(value) -> str:
  """Hyperparameters as written in configs: 2.0 -> '2', 0.081 -> '0.081'."""
  number = _number(value)
  if number is not None:
    if number == int(number) and abs(number) < 1e15:
      return str(int(number))
    return f'{number:.6g}'
  if value is None or value == '':
    return MISSING
  return str(value)


def _values(name: str, summary: Dict[str, Any]) -> Dict[str, Any]:
  """The row's values, unformatted (None where unknown)."""
  hparams = summary.get('hparams')
  hparams = hparams if isinstance(hparams, dict) else {}
  images_per_ms = _number(summary.get('images_per_ms'))
  if images_per_ms is None and _number(summary.get('images_per_second')):
    images_per_ms = _number(summary.get('images_per_second')) / 1000.0
  paper = _number(summary.get('paper_top1'))
  return {
      'run': name,
      'model': hparams.get('model'),
      'replicas': hparams.get('replicas'),
      'global_batch': hparams.get('global_batch_size'),
      'optimizer': hparams.get('optimizer'),
      'lr_per_256': hparams.get('lr_per_256'),
      'decay': hparams.get('decay'),
      'warmup_epochs': hparams.get('warmup_epochs'),
      'peak_top1': _number(summary.get('peak_top1')),
      'time_to_peak_s': _number(summary.get('time_to_peak_s')),
      'images_per_ms': images_per_ms,
      'paper_top1': paper,
      'paper_top1_reached': (None if paper is None else
                             summary.get('paper_top1_reached') is True),
      'time_to_paper_top1_s': _number(summary.get('time_to_paper_top1_s')),
      'status': summary.get('status'),
  }


def _percent(fraction: Optional[float]) -> str:
  return f'{100 * fraction:.1f}%' if fraction is not None else MISSING


def _time_to_paper_top1(values: Dict[str, Any]) -> str:
  if values['paper_top1'] is None:
    return MISSING
  if not values['paper_top1_reached']:
    return NOT_REACHED
  return format_duration(values['time_to_paper_top1_s'])


def _row(name: str, summary: Dict[str, Any]) -> List[str]:
  v = _values(name, summary)
  return [
      name,
      _plain(v['model']),
      _plain(v['replicas']),
      _plain(v['global_batch']),
      _plain(v['optimizer']),
      _plain(v['lr_per_256']),
      _plain(v['decay']),
      _plain(v['warmup_epochs']),
      _percent(v['peak_top1']),
      (format_duration(v['time_to_peak_s'])
       if v['time_to_peak_s'] is not None else MISSING),
      (_significant(v['images_per_ms'])
       if v['images_per_ms'] is not None else MISSING),
      _percent(v['paper_top1']),
      _time_to_paper_top1(v),
  ]


def _cell(text: str) -> str:
  # A '|' in a run name would split the markdown cell.
  return text.replace('|', r'\|')


def format_table(runs: Runs) -> str:
  """A GitHub markdown table, one row per (name, summary), padded to read."""
  rows = [[_cell(c) for c in _row(name, s)] for name, s in runs]
  headers = [h for h, _ in COLUMNS]
  widths = [max([len(headers[i])] + [len(r[i]) for r in rows])
            for i in range(len(headers))]

  def line(cells, numeric=None):
    padded = []
    for i, c in enumerate(cells):
      right = numeric is not None and COLUMNS[i][1]
      padded.append(c.rjust(widths[i]) if right else c.ljust(widths[i]))
    return '| ' + ' | '.join(padded) + ' |'

  rule = '|' + '|'.join(
      ('-' * (w + 1) + ':') if numeric else ('-' * (w + 2))
      for w, (_, numeric) in zip(widths, COLUMNS)) + '|'
  return '\n'.join([line(headers), rule] +
                   [line(r, numeric=True) for r in rows])


def format_text_table(runs: Runs) -> str:
  """The same columns as plain text, aligned for a terminal."""
  rows = [[h for h, _ in COLUMNS]] + [_row(name, s) for name, s in runs]
  widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]

  def line(cells, numeric):
    return '  '.join(
        c.rjust(w) if numeric and COLUMNS[i][1] else c.ljust(w)
        for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  return '\n'.join([line(rows[0], False)] +
                   [line(r, True) for r in rows[1:]])


def format_csv(runs: Runs) -> str:
  """CSV for spreadsheets: one header line, raw values, empty when unknown."""
  out = io.StringIO()
  writer = None
  for name, summary in runs:
    values = _values(name, summary)
    if writer is None:
      writer = csv.DictWriter(out, fieldnames=list(values),
                              lineterminator='\n')
      writer.writeheader()
    writer.writerow({k: '' if v is None else v for k, v in values.items()})
  return out.getvalue().rstrip('\n')


FORMATTERS = {'markdown': format_table, 'table': format_text_table,
              'csv': format_csv}


def format_notes(runs: Runs) -> str:
  """Caveats the table cannot show: runs still training or not evaluated."""
  notes = []
  for name, summary in runs:
    if not summary['evals']:
      notes.append(f'{name}: no evaluation yet')
    elif summary.get('status') != 'finished':
      status = summary.get('status') or 'unknown'
      state = 'still running' if status == 'running' else f'status {status}'
      notes.append(f'{name}: {state}; its peak may still rise')
  return '\n'.join(f'note: {n}' for n in notes)


# ----------------------------------------------------------------------------
# Plot.
# ----------------------------------------------------------------------------


def _curve(evals, x_key: str, scale: float = 1.0):
  """(x, top-1 %) points; evaluations missing either value are skipped."""
  points = [(_number(e.get(x_key)), _number(e.get('top1'))) for e in evals]
  points = [(x * scale, 100 * y) for x, y in points
            if x is not None and y is not None]
  return [x for x, _ in points], [y for _, y in points]


def plot(runs: Runs, path: str) -> str:
  """Writes top-1 vs wall time and vs epoch to the PNG `path` atomically."""
  # Imported here so printing the table needs no plotting stack; Agg because
  # this runs on headless training hosts.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(12, 4.5))
  try:
    for name, summary in runs:
      evals = summary['evals']
      by_time.plot(*_curve(evals, 'elapsed_s', 1 / 60), marker='o',
                   markersize=3, label=name)
      by_epoch.plot(*_curve(evals, 'epoch'), marker='o', markersize=3,
                    label=name)
    for ax, title, xlabel in (
        (by_time, 'Top-1 vs wall time', 'wall time (minutes)'),
        (by_epoch, 'Top-1 vs epoch', 'epoch')):
      ax.set_title(title)
      ax.set_xlabel(xlabel)
      ax.set_ylabel('top-1 (%)')
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize='small')
    fig.tight_layout()

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Temp file in the same directory, then rename: a reader (or an
    # interrupted run) never sees a half-written PNG.
    fd, temp = tempfile.mkstemp(prefix='.compare_runs-', suffix='.png',
                                dir=directory)
    try:
      with os.fdopen(fd, 'wb') as f:
        fig.savefig(f, format='png', dpi=100)
      os.replace(temp, path)
    except BaseException:
      if os.path.exists(temp):
        os.remove(temp)
      raise
  finally:
    plt.close(fig)
  return path


# ----------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    self.print_usage(sys.stderr)
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(
      prog='python -m official_ext.tools.compare_runs',
      description=('Compare training runs (their summary.json) in a '
                   'Table-2-style markdown table, optionally plotting top-1.'))
  p.add_argument('run_dirs', nargs='+', metavar='RUN_DIR',
                 help=f'{EXPECTED}, or a directory of them')
  p.add_argument('--format', choices=FORMATS, default='markdown',
                 help='markdown (default), table (plain text) or csv')
  p.add_argument('--plot', metavar='FILE.png', default=None,
                 help='also write top-1 vs wall time / epoch to this PNG')
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  # Checked before loading anything, so a typo does not cost a long wait.
  if args.plot is not None and not args.plot.lower().endswith('.png'):
    print(f'error: --plot {args.plot}: expected a file name ending in .png',
          file=sys.stderr)
    return 2
  try:
    runs = load_runs(expand_run_dirs(args.run_dirs))
  except RunDirError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(FORMATTERS[args.format](runs))
  notes = format_notes(runs)
  if notes:
    # A CSV on stdout stays one header and its rows.
    stream = sys.stderr if args.format == 'csv' else sys.stdout
    if stream is sys.stdout:
      print()
    print(notes, file=stream)
  if args.plot is not None:
    try:
      written = plot(runs, args.plot)
    except OSError as e:
      print(f'error: cannot write --plot {args.plot}: {e}', file=sys.stderr)
      return 2
    print(f'wrote {written}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
