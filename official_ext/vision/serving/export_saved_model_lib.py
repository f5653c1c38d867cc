"""Exporting a trained run's checkpoint as a SavedModel, and its checks.

The procedure behind `python -m official_ext.tools.export_saved_model` (see
there for the command line): which checkpoint, whether the params are the
run's, and an export that never leaves a partial or overwritten directory.
The module and its signatures are official_ext.vision.serving
.image_classification's.
"""
import os
import shutil
import tempfile

import tensorflow as tf

from official.core import export_base
from official.modeling import performance
from official_ext.core import resume_guard
from official_ext.vision.serving import image_classification as serving


# Params (dotted prefixes) that decide what the exported model computes.
EXPORTED_COMPUTATION = ('task.model.', 'task.validation_data.',
                        'runtime.mixed_precision_dtype',
                        'trainer.optimizer_config.ema')
# Resolved for the run's replicas; inference does not depend on them.
_REPLICA_FIELDS = ('task.model.norm_activation.bn_group_size',
                   'task.model.norm_activation.device_mesh',
                   'task.model.norm_activation.cores_per_chip')


class ExportError(ValueError):
  """A user error: one line, exit status 2."""


def check_export_dir(export_dir: str) -> None:
  """export_dir must be new or an empty directory."""
  if not tf.io.gfile.exists(export_dir):
    return
  if not tf.io.gfile.isdir(export_dir):
    raise ExportError(f'--export_dir={export_dir!r} is a file; pass a new '
                      'directory')
  if tf.io.gfile.listdir(export_dir):
    raise ExportError(f'--export_dir={export_dir!r} is not empty; pass a new '
                      'or empty directory (an export is never overwritten)')


def find_checkpoint(model_dir: str, checkpoint_path: str) -> str:
  """The checkpoint to export: checkpoint_path (file or dir) or model_dir's."""
  source = checkpoint_path or model_dir
  flag = '--checkpoint_path' if checkpoint_path else '--model_dir'
  if tf.io.gfile.isdir(source):
    latest = tf.train.latest_checkpoint(source)
    if latest is None:
      raise ExportError(f'{flag}={source!r} holds no checkpoint; pass the '
                        '--model_dir of a trained run')
    return latest
  if not tf.io.gfile.exists(source + '.index'):
    raise ExportError(f'{flag}={source!r} is neither a checkpoint (no '
                      f'{source}.index) nor a directory holding one')
  return source


def check_matches_run(model_dir: str, params) -> None:
  """The params that decide the export must be the run's (params.yaml)."""
  try:
    changes = resume_guard.changes_from_run(model_dir, params)
  except resume_guard.ResumeRefused as e:
    raise ExportError(str(e)) from None
  blocking = [c for c in changes
              if c[0].startswith(EXPORTED_COMPUTATION)
              and c[0] not in _REPLICA_FIELDS
              and not resume_guard.is_runtime_only(c[0])]
  if blocking:
    shown = '; '.join(f'{field}: {before!r} there, {after!r} now'
                      for field, before, after in blocking[:8])
    raise ExportError(
        f'the params differ from the run in {model_dir}/params.yaml in '
        f'{len(blocking)} field(s) of the exported model: {shown}; pass the '
        '--experiment and overrides the run was trained with')


def export(params, checkpoint: str, export_dir: str,
           batch_size=None) -> str:
  """Writes the SavedModel of `checkpoint` to export_dir; returns it."""
  precision = params.runtime.mixed_precision_dtype
  if precision in ('bfloat16', 'float16'):  # As the run driver.
    performance.set_mixed_precision_policy(precision)
  params = serving.local_batch_norm_params(params)
  try:
    model = serving.restore_evaluated_weights(params, checkpoint)
  except (ValueError, tf.errors.InvalidArgumentError) as e:
    # Another model's checkpoint (other classes, sizes or backbone).
    raise ExportError(f'{str(e).strip().splitlines()[0]}; pass the '
                      '--experiment and overrides the run was trained '
                      'with') from None
  module = serving.ClassificationModule(params, model=model,
                                        batch_size=batch_size)
  if '://' in export_dir:  # Object stores have no atomic directory rename.
    return export_base.export(module, dict(serving.SIGNATURES), export_dir,
                              timestamped=False)
  parent = os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(parent, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix='.export-', dir=parent)
  try:
    written = export_base.export(module, dict(serving.SIGNATURES),
                                 os.path.join(scratch, 'saved_model'),
                                 timestamped=False)
    if os.path.isdir(export_dir):
      os.rmdir(export_dir)  # Empty (checked); rename needs it gone.
    os.rename(written, export_dir)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return export_dir
