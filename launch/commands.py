"""An ordered list of shell commands: printed for a dry run, or run.

A launcher builds its whole plan as `Command`s (and `WriteFile`s) before
anything runs, so that `--dry_run` prints exactly what a real launch would
execute, in order. Commands marked `concurrent` that follow one another are
started together (one training process per host) and waited for as a group.
"""
import dataclasses
import shlex
import subprocess
import sys
import threading
from typing import List, Optional, Sequence, Tuple, Union


class LaunchError(ValueError):
  """A bad flag or cluster state, reported as one line (exit code 2)."""


class CommandFailed(RuntimeError):
  """A command of the plan exited non-zero (exit code 1)."""


@dataclasses.dataclass(frozen=True)
class Command:
  """One command: its argv, why it runs, and whether it runs concurrently.

  `condition`, when set, says when a real launch runs it (the dry run
  cannot know, e.g. "if the slice does not exist"); the launcher decides
  before running, so a plan that runs holds no conditional commands.
  """
  argv: Tuple[str, ...]
  note: str = ''
  concurrent: bool = False
  condition: str = ''

  @property
  def text(self) -> str:
    return shlex.join(self.argv)


@dataclasses.dataclass(frozen=True)
class WriteFile:
  """A file the launch writes (a job script); printed as a heredoc."""
  path: str
  content: str
  note: str = ''
  concurrent = False
  condition = ''

  @property
  def text(self) -> str:
    return (f"cat > {shlex.quote(self.path)} <<'EOF'\n"
            f"{self.content.rstrip()}\nEOF")


Step = Union[Command, WriteFile]


def format_plan(commands: Sequence[Step]) -> str:
  """The dry-run printout: each command under a `# n. note` line."""
  lines = []
  for number, command in enumerate(commands, 1):
    note = command.note
    if command.condition:
      note = f'{note} ({command.condition})' if note else command.condition
    if command.concurrent:
      note = f'{note} [runs concurrently with its group]'
    lines.append(f'# {number}. {note}'.rstrip())
    lines.append(command.text)
  return '\n'.join(lines)


def _groups(commands: Sequence[Step]) -> List[List[Step]]:
  """Consecutive concurrent commands form one group; others stand alone."""
  groups: List[List[Command]] = []
  for command in commands:
    if command.concurrent and groups and groups[-1][0].concurrent:
      groups[-1].append(command)
    else:
      groups.append([command])
  return groups


def _failure(command: Command, returncode: int) -> CommandFailed:
  return CommandFailed(
      f'command exited with status {returncode}: {command.text}')


def _not_found(argv: Sequence[str], error: OSError) -> CommandFailed:
  return CommandFailed(f'cannot run {argv[0]} ({error.strerror}); install it '
                       f'or put it on PATH: {shlex.join(argv)}')


def run(commands: Sequence[Step], out=None) -> None:
  """Runs `commands` in order; raises CommandFailed at the first failure.

  A concurrent group's output lines are prefixed with the command's number;
  when one of its commands fails the others are waited for, then the first
  failure is raised.
  """
  out = out or sys.stdout
  number = 0
  for group in _groups(commands):
    for command in group:
      if command.condition:
        raise ValueError(f'conditional command in a plan to run: '
                         f'{command.text}')
    if isinstance(group[0], WriteFile):
      number += 1
      print(f'+ write {group[0].path}', file=out, flush=True)
      with open(group[0].path, 'w') as f:
        f.write(group[0].content)
      continue
    if len(group) == 1 and not group[0].concurrent:
      number += 1
      print(f'+ {group[0].text}', file=out, flush=True)
      try:
        result = subprocess.run(group[0].argv, check=False)
      except OSError as e:
        raise _not_found(group[0].argv, e) from e
      if result.returncode:
        raise _failure(group[0], result.returncode)
      continue
    processes = []
    for command in group:
      number += 1
      print(f'+ [{number}] {command.text}', file=out, flush=True)
      try:
        process = subprocess.Popen(
            command.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1)
      except OSError as e:
        for _, started, _ in processes:
          started.terminate()
        raise _not_found(command.argv, e) from e
      thread = threading.Thread(target=_stream,
                                args=(process, f'[{number}] ', out),
                                daemon=True)
      thread.start()
      processes.append((command, process, thread))
    failed: Optional[CommandFailed] = None
    try:
      for command, process, thread in processes:
        returncode = process.wait()
        thread.join()
        if returncode and failed is None:
          failed = _failure(command, returncode)
    except KeyboardInterrupt:
      for _, process, _ in processes:
        process.terminate()
      raise
    if failed:
      raise failed


def _stream(process: subprocess.Popen, prefix: str, out) -> None:
  for line in process.stdout:
    out.write(prefix + line)
    out.flush()


def capture(argv: Sequence[str]) -> Tuple[int, str]:
  """Runs a query command; returns (exit status, stdout)."""
  try:
    result = subprocess.run(list(argv), capture_output=True, text=True,
                            check=False)
  except OSError as e:
    raise _not_found(argv, e) from e
  return result.returncode, result.stdout
