"""What a relaunch may change when it resumes a run in an existing model_dir.

A preempted job is relaunched with the same command, often on a recreated
TPU (a new name or address), with the data moved, or with another logging
cadence. Those fields change where and how the run executes, not what it
computes, so the run may resume with them changed (`RUNTIME_ONLY`); the
change is appended to `params_changes.yaml` next to `params.yaml`, which is
rewritten. Any other difference (model, data content, optimization,
schedule, replicas, precision) would mix two runs' checkpoints and
summaries: the resume is refused, naming every such field.
`--force_params` accepts any change (and records it).
"""
import datetime
import fnmatch
import os
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf
import yaml

from official.modeling import hyperparams

PARAMS_FILE = 'params.yaml'
CHANGES_FILE = 'params_changes.yaml'

# Fields (dotted, fnmatch patterns) a resume may change.
RUNTIME_ONLY: Tuple[str, ...] = (
    # Where the job runs: the TPU's name or address, the cluster's hosts.
    'runtime.tpu', 'runtime.tpu_connect_timeout_s', 'runtime.worker_hosts',
    'runtime.task_index',
    'runtime.all_reduce_alg', 'runtime.num_packs',
    'runtime.gpu_thread_mode', 'runtime.per_gpu_thread_count',
    'runtime.dataset_num_private_threads',
    # Where the data is, and how it is read (not what is read).
    'task.*_data.input_path', 'task.*_data.tfds_data_dir',
    'task.*_data.cycle_length', 'task.*_data.block_length',
    'task.*_data.prefetch_buffer_size', 'task.*_data.ram_budget',
    'task.*_data.autotune_algorithm', 'task.*_data.enable_tf_data_service',
    'task.*_data.tf_data_service_*', 'task.*_data.trainer_id',
    # Evaluation batch, evaluation and logging cadence.
    'task.validation_data.global_batch_size', 'trainer.validation_steps',
    'trainer.eval_every_epochs', 'trainer.validation_interval',
    'trainer.steps_per_loop', 'trainer.summary_interval',
    'trainer.checkpoint_interval', 'trainer.max_to_keep',
    'trainer.continuous_eval_timeout', 'trainer.best_checkpoint_*',
    'trainer.validation_summary_subdir',
    'trainer.preemption_on_demand_checkpoint', 'trainer.eval_tf_*',
    'trainer.allow_tpu_summary',
    # How a gradient is computed, not its value (a CPU speed-up; runs saved
    # before the field existed lack it).
    'task.model.backbone.paper_efficientnet.depthwise_kernel_gradient',
)


class ResumeRefused(ValueError):
  """model_dir holds a run whose params differ in fields that matter."""


def _plain(value):
  """Tuples to lists, recursively, so YAML round trips compare equal."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def differences(old: Any, new: Any, path: str = '') -> List[Tuple[str, Any,
                                                                  Any]]:
  """(dotted field, old, new) for every leaf that differs."""
  if isinstance(old, dict) and isinstance(new, dict):
    found = []
    for key in sorted(set(old) | set(new)):
      found += differences(old.get(key), new.get(key),
                           f'{path}.{key}' if path else key)
    return found
  return [] if old == new else [(path, old, new)]


def is_runtime_only(field: str) -> bool:
  return any(fnmatch.fnmatchcase(field, pattern) for pattern in RUNTIME_ONLY)


def read_params(model_dir: str) -> Optional[Dict[str, Any]]:
  """The params.yaml of model_dir as a dict, None if there is none."""
  path = os.path.join(model_dir, PARAMS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    try:
      old = yaml.load(f, Loader=yaml.FullLoader)
    except yaml.YAMLError as e:
      raise ResumeRefused(
          f'{path} is not readable YAML ({e.__class__.__name__}); move it '
          'away or use a new --model_dir') from e
  if not isinstance(old, dict):
    raise ResumeRefused(f'{path} does not hold experiment params; move it '
                        'away or use a new --model_dir')
  return old


def changes_from_run(model_dir: str, params) -> List[Tuple[str, Any, Any]]:
  """(field, value in model_dir's params.yaml, value in `params`) per change.

  [] for a model_dir without params.yaml.
  """
  old = read_params(model_dir)
  if old is None:
    return []
  return differences(_plain(old), _plain(params.as_dict()))


def check_resume(model_dir: str, params,
                 force: bool = False) -> List[Tuple[str, Any, Any]]:
  """The changes a resume into model_dir makes; raises if it may not.

  Returns [] for a new model_dir or identical params; otherwise the changed
  fields, all runtime-only unless `force`.
  """
  changes = changes_from_run(model_dir, params)
  blocking = [c for c in changes if not is_runtime_only(c[0])]
  if blocking and not force:
    shown = '; '.join(f'{field}: {before!r} there, {after!r} now'
                      for field, before, after in blocking[:12])
    more = (f' (and {len(blocking) - 12} more)' if len(blocking) > 12
            else '')
    raise ResumeRefused(
        f'model_dir {model_dir!r} holds a run with different params in '
        f'{len(blocking)} field(s) that change what it computes: {shown}'
        f'{more}; use a new --model_dir, the same params to resume, or '
        '--force_params to resume anyway')
  return changes


def write_params(params, model_dir: str,
                 changes: List[Tuple[str, Any, Any]] = ()) -> None:
  """Writes params.yaml atomically; appends `changes` to params_changes.yaml.

  The change record is written first, so a kill in between leaves the old
  params.yaml and a record of a change that is then simply seen again.
  """
  tf.io.gfile.makedirs(model_dir)
  if changes:
    record = {'time': datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds'),
              'changes': {field: {'before': before, 'after': after}
                          for field, before, after in changes},
              'forced': [f for f, _, _ in changes if not is_runtime_only(f)]}
    path = os.path.join(model_dir, CHANGES_FILE)
    history = []
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        history = yaml.safe_load(f) or []
    _atomic_write(path, yaml.safe_dump(history + [record], sort_keys=False))
  final = os.path.join(model_dir, PARAMS_FILE)
  temp = final + '.tmp'
  hyperparams.save_params_dict_to_yaml(params, temp)
  tf.io.gfile.rename(temp, final, overwrite=True)


def _atomic_write(path: str, text: str) -> None:
  temp = path + '.tmp'
  with tf.io.gfile.GFile(temp, 'w') as f:
    f.write(text)
  tf.io.gfile.rename(temp, path, overwrite=True)
