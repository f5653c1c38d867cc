r"""Compares training runs side by side, in the shape of the paper's Table 2.

  python -m official_ext.tools.compare_runs RUN_DIR [RUN_DIR ...] \
      [--plot FILE.png]

Each RUN_DIR is a model_dir written by train.py; it holds `summary.json`, the
time-to-accuracy record (`official_ext.core.time_to_accuracy`). One markdown
table row is printed per run, in the order given:

  run | model | replicas | global batch | optimizer | LR per 256 | decay |
  warmup (epochs) | peak top-1 | time to peak | images/ms

Runs are named by their directory's basename (the full path when two
basenames clash). Missing values print as `-`; a run that is still going is
listed in a note under the table, since its peak may still rise.

With --plot, one PNG is written with two panels, top-1 against wall time and
top-1 against epoch, one line per run.

Bad arguments print one `error:` line and exit with status 2.
"""
import argparse
import json
import math
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from official_ext.core import progress  # TF-free: keeps this CLI fast.

SUMMARY_FILE = 'summary.json'
EXPECTED = 'a model_dir written by train.py, holding summary.json'

# (name, summary) pairs, in the order the user gave the run directories.
Runs = Sequence[Tuple[str, Dict[str, Any]]]

# Header, and whether the column is numeric (right-aligned in markdown).
COLUMNS = (
    ('run', False), ('model', False), ('replicas', True),
    ('global batch', True), ('optimizer', False), ('LR per 256', True),
    ('decay', False), ('warmup (epochs)', True), ('peak top-1', True),
    ('time to peak', True), ('images/ms', True),
)
MISSING = '-'


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


def _row(name: str, summary: Dict[str, Any]) -> List[str]:
  hparams = summary.get('hparams')
  hparams = hparams if isinstance(hparams, dict) else {}
  peak = _number(summary.get('peak_top1'))
  time_to_peak = _number(summary.get('time_to_peak_s'))
  images_per_ms = _number(summary.get('images_per_ms'))
  if images_per_ms is None and _number(summary.get('images_per_second')):
    images_per_ms = _number(summary.get('images_per_second')) / 1000.0
  return [
      name,
      _plain(hparams.get('model')),
      _plain(hparams.get('replicas')),
      _plain(hparams.get('global_batch_size')),
      _plain(hparams.get('optimizer')),
      _plain(hparams.get('lr_per_256')),
      _plain(hparams.get('decay')),
      _plain(hparams.get('warmup_epochs')),
      f'{100 * peak:.1f}%' if peak is not None else MISSING,
      format_duration(time_to_peak) if time_to_peak is not None else MISSING,
      _significant(images_per_ms) if images_per_ms is not None else MISSING,
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
                 help=EXPECTED)
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
    runs = load_runs(args.run_dirs)
  except RunDirError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(format_table(runs))
  notes = format_notes(runs)
  if notes:
    print()
    print(notes)
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
