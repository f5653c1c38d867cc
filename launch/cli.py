"""What the launchers' command lines share: absl flags parsed into their own
`FlagValues` (train.py owns the global ones, and tests import both), one
`error:` line per user error, and the dry-run / run switch.
"""
import sys
from typing import Callable, List, Sequence

from absl import flags

from launch import commands

USAGE_ERROR = 2
COMMAND_FAILED = 1
INTERRUPTED = 130


def parse(argv: Sequence[str], define: Callable[[flags.FlagValues], None]
          ) -> flags.FlagValues:
  """Flags defined by `define`, parsed from `argv`; LaunchError if bad."""
  values = flags.FlagValues()
  define(values)
  try:
    rest = values(list(argv))
  except flags.Error as e:
    raise commands.LaunchError(str(e).splitlines()[0]) from e
  if len(rest) > 1:
    raise commands.LaunchError(
        f'unexpected arguments: {" ".join(rest[1:])}')
  return values


HELP_FLAGS = ('--help', '-h', '--helpshort', '--helpfull')


def main(argv: Sequence[str], define: Callable[[flags.FlagValues], None],
         launch: Callable[[flags.FlagValues], List[commands.Step]],
         doc: str = '', interrupted_hint: str = '') -> int:
  """Parses, plans (`launch` returns the commands), then prints or runs.

  `launch` may run query commands itself (unless --dry_run) to decide the
  plan; it raises LaunchError for a bad flag or cluster state. --help
  prints `doc` and the flags.
  """
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    values = flags.FlagValues()
    define(values)
    print(f'{doc.strip()}\n\nflags:\n{values.get_help()}')
    return 0
  try:
    values = parse(argv, define)
    plan = launch(values)
    if values.dry_run:
      print(commands.format_plan(plan))
      return 0
    commands.run(plan)
  except commands.LaunchError as e:
    print(f'error: {e}', file=sys.stderr)
    return USAGE_ERROR
  except commands.CommandFailed as e:
    print(f'error: {e}', file=sys.stderr)
    return COMMAND_FAILED
  except KeyboardInterrupt:
    print(f'interrupted{"; " + interrupted_hint if interrupted_hint else ""}',
          file=sys.stderr)
    return INTERRUPTED
  return 0


def define_dry_run(values: flags.FlagValues) -> None:
  flags.DEFINE_bool(
      'dry_run', False,
      'Print the commands, in order, and run nothing.', flag_values=values)
