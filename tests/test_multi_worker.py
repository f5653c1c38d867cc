"""train.py under MultiWorkerMirroredStrategy: two worker processes on localhost.

The workers share one model_dir, as on a GPU cluster: both train and
evaluate (exactly: each host pads its own eval shard), and only the chief
writes params.yaml, summary.json and the HParams data.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf
import yaml

from official_ext.tools import make_fixture
from tests import short_runs


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def start_two_workers(model_dir, override, mode):
  """Starts train.py as both workers of a localhost cluster."""
  workers = [f'localhost:{port}' for port in free_ports(2)]
  processes = []
  for index in range(2):
    tf_config = {'cluster': {'worker': workers},
                 'task': {'type': 'worker', 'index': index}}
    processes.append(subprocess.Popen(
        [sys.executable, os.path.join(short_runs.ROOT, 'train.py'),
         f'--experiment={short_runs.EXPERIMENT}', f'--model_dir={model_dir}',
         f'--params_override={override}', f'--mode={mode}'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=short_runs.ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
                 TF_CONFIG=json.dumps(tf_config))))
  return processes


def finish(processes, timeout=900):
  """(stdout, stderr) of each process; none is left running."""
  try:
    return [process.communicate(timeout=timeout) for process in processes]
  finally:
    for process in processes:
      if process.poll() is None:  # A hung worker: leave none behind.
        process.kill()
        process.communicate()


def run_two_workers(model_dir, override, mode, timeout=900):
  """Runs both workers to the end; their stdouts."""
  processes = start_two_workers(model_dir, override, mode)
  results = finish(processes, timeout)
  # A worker that crashes makes the other fail on a collective: show every
  # failed worker's error lines (the tail of stderr is mostly warnings).
  failures = [
      f'worker {index} exit {process.returncode}:\n' + '\n'.join(
          [line for line in err.splitlines() if 'Error' in line][-5:]
          or [err[-3000:]])
      for index, (process, (_, err)) in enumerate(zip(processes, results))
      if process.returncode != 0]
  assert not failures, '\n'.join(failures)
  for out, _ in results:
    assert '2 replicas (CollectiveAllReduceStrategy)' in out, out
  return [out for out, _ in results]


def eval_lines(out):
  return re.findall(r'eval at step (\d+) .*?top-1 ([\d.]+) .*?loss ([\d.]+)',
                    out)


@pytest.mark.slow  # ~3 minutes: 2 workers, one killed; both rerun; an eval job.
def test_two_workers_survive_a_kill_and_evaluate_in_one_model_dir(tmp_path):
  fixture = make_fixture.make_fixture(
      str(tmp_path / 'fixture'), num_classes=short_runs.NUM_CLASSES,
      num_train=short_runs.NUM_TRAIN, num_eval=short_runs.NUM_EVAL,
      image_size=20)
  override = tmp_path / 'override.yaml'
  override.write_text(yaml.safe_dump(short_runs.override(fixture, {
      'runtime': {'num_cpu_replicas': 0,
                  'distribution_strategy': 'multi_worker_mirrored'}})))
  model_dir = tmp_path / 'run'

  # Worker 1 is killed once the first checkpoint is written: worker 0 stops
  # on its next collective, within TensorFlow's coordination-service
  # heartbeat timeout, with one line and no traceback.
  first = model_dir / f'ckpt-{short_runs.EVAL_STEPS[0]}'
  processes = start_two_workers(model_dir, override, 'train_and_eval')
  deadline = time.time() + 900
  while tf.train.latest_checkpoint(str(model_dir)) != str(first):
    assert processes[0].poll() is None and time.time() < deadline, (
        finish(processes)[0][1][-3000:])
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  (_, err), _ = finish(processes, timeout=120)
  survivor_exit_s = time.time() - killed_at
  assert processes[0].returncode == 1, err[-3000:]
  assert survivor_exit_s < 60
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert errors == [errors[0]] and (
      'another worker of this multi-worker job stopped' in errors[0]), err
  assert 'Traceback' not in err

  # Rerunning both resumes both from that checkpoint and finishes.
  outputs = run_two_workers(model_dir, override, 'train_and_eval')
  for out in outputs:
    assert f'restored model from {first}' in out, out
  # Metrics are global: both workers print the same numbers.
  evals = [eval_lines(out) for out in outputs]
  assert evals[0] and evals[0][-1][0] == str(short_runs.TRAIN_STEPS)
  assert evals[0] == evals[1]

  with open(model_dir / 'summary.json') as f:
    summary = json.load(f)
  steps = [e['step'] for e in summary['evals']]
  assert steps[-1] == short_runs.TRAIN_STEPS and set(steps) <= set(
      short_runs.EVAL_STEPS)
  assert summary['hparams']['replicas'] == 2
  assert not [name for name in os.listdir(model_dir)
              if name.endswith('.tmp')]
  assert (model_dir / 'params.yaml').exists()
  # Only the chief writes TensorBoard events (one file per launch) and (EMA)
  # checkpoints here.
  for subdir in ('train', 'validation'):
    assert len(os.listdir(model_dir / subdir)) <= 2, subdir
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(
      f'ckpt-{short_runs.TRAIN_STEPS}')
  ema_dir = model_dir / 'ema_checkpoints'
  assert tf.train.latest_checkpoint(str(ema_dir)).endswith(
      f'average_weights-{short_runs.TRAIN_STEPS}')

  # Both workers of a later job restore the chief's checkpoint (a worker left
  # at step 0 would train alone and hang on a collective), and decide alike
  # whether an eval is the best so far (a save is a collective): their global
  # metrics are those of a one-process eval of it.
  outputs = run_two_workers(model_dir, override, 'eval')
  restored = f'restored model from {model_dir / f"ckpt-{short_runs.TRAIN_STEPS}"}'
  assert all(restored in out for out in outputs), outputs
  single = short_runs.launch(model_dir, fixture, mode='eval')
  assert single.returncode == 0, single.stderr[-3000:]
  (expected,) = eval_lines(single.stdout)
  assert expected[0] == str(short_runs.TRAIN_STEPS)
  for out in outputs:
    (step, top1, loss), = eval_lines(out)
    assert step == expected[0]
    assert float(top1) == pytest.approx(float(expected[1]), abs=1e-4)
    assert float(loss) == pytest.approx(float(expected[2]), rel=1e-4)

