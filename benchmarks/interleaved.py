"""Interleaved timing shared by the benchmarks.

Candidates are timed in rounds whose order rotates, so that load from other
processes on a shared machine hits every candidate alike; each round records
wall-clock and process CPU seconds per call.
"""
import time
from typing import Any, Callable, Dict, List, Tuple

Timings = Dict[str, List[float]]


def time_interleaved(fns: Dict[str, Callable[[], Any]], calls: int,
                     rounds: int, wait: Callable[[Any], None]
                     ) -> Tuple[Timings, Timings]:
  """Times already traced and warmed-up `fns` (name -> zero-argument call).

  Per round, each fn is called `calls` times, then `wait(last output)` blocks
  until its work is done. Returns (wall, cpu): name -> seconds per call, one
  entry per round; CPU time covers all threads of this process and is less
  sensitive to other processes sharing the machine than wall-clock time.
  """
  names = list(fns)
  wall = {name: [] for name in names}
  cpu = {name: [] for name in names}
  for r in range(rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      start, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(calls):
        output = fns[name]()
      wait(output)
      wall[name].append((time.perf_counter() - start) / calls)
      cpu[name].append((time.process_time() - start_cpu) / calls)
  return wall, cpu
