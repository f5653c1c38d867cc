r"""Exports a trained run as a SavedModel for serving.

  python -m official_ext.tools.export_saved_model --experiment=NAME \
      --model_dir=DIR [--checkpoint_path=CKPT] --export_dir=OUT \
      [--config_file=... --gin_file=... --gin_params=... --params_override=...]

The params are parsed as train.py parses them (same flags, same precedence);
when model_dir holds the run's params.yaml, the fields that decide the
exported computation (task.model, the eval input, precision, EMA) must match
it. The checkpoint is --checkpoint_path (a checkpoint or a directory), else
the latest in model_dir. The exported weights are the ones the run's
evaluation used: the EMA averages when the run trained with EMA.

OUT receives a SavedModel built with Model Garden's export module
(official_ext.vision.serving.image_classification) with two signatures:
`serving_default` (a batch of encoded JPEG/PNG strings, preprocessed as this
project's evaluation preprocesses) and `serving_preprocessed` (float32
images [batch, size, size, 3]); both return `logits` and `probabilities`.
OUT must be new or empty; the SavedModel is written beside it and renamed
into place, so OUT never holds a partial export.

Bad arguments print one `error:` line and exit with status 2.
"""
import sys

from official_ext.core import native_logs

native_logs.quiet_tensorflow_logs()  # Before TensorFlow is imported.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

import experiments  # pylint: disable=unused-import  (registers experiments)
from official_ext.core import config_overrides
from official_ext.vision.serving import export_saved_model_lib as export_lib
from official_ext.vision.serving import image_classification as serving

flags.DEFINE_string('experiment', None, 'Registered experiment name.')
flags.DEFINE_string('model_dir', None,
                    'The run directory (its params.yaml and checkpoints).')
flags.DEFINE_string(
    'checkpoint_path', None,
    'A checkpoint (e.g. DIR/ckpt-340) or a directory; default the latest '
    'checkpoint in --model_dir.')
flags.DEFINE_string('export_dir', None,
                    'Where the SavedModel goes; must be new or empty.')
flags.DEFINE_integer('batch_size', None,
                     'Fixed batch size of the signatures; default any.')
flags.DEFINE_multi_string(
    'config_file', None, 'YAML files overriding the experiment, in order.')
flags.DEFINE_string('params_override', '',
                    'Last override: YAML string/file or "a.b=1,c.d=x".')
flags.DEFINE_multi_string('gin_file', None, 'Gin files, in order.')
flags.DEFINE_multi_string('gin_params', None, 'Gin bindings, in order.')

FLAGS = flags.FLAGS


def _export() -> str:
  """Checks the flags, then exports; returns the line to print."""
  for name in ('experiment', 'export_dir'):
    if not FLAGS[name].value:
      raise export_lib.ExportError(f'--{name} is required')
  if not (FLAGS.model_dir or FLAGS.checkpoint_path):
    raise export_lib.ExportError(
        'pass --model_dir (the run) or --checkpoint_path')
  if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
    raise export_lib.ExportError(
        f'--batch_size={FLAGS.batch_size} must be a positive integer (or '
        'unset for any batch)')
  export_lib.check_export_dir(FLAGS.export_dir)
  checkpoint = export_lib.find_checkpoint(FLAGS.model_dir,
                                          FLAGS.checkpoint_path)
  params = config_overrides.parse_configuration(
      FLAGS.experiment, config_files=FLAGS.config_file,
      gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_params,
      params_override=FLAGS.params_override)
  if FLAGS.model_dir:
    export_lib.check_matches_run(FLAGS.model_dir, params)
  written = export_lib.export(params, checkpoint, FLAGS.export_dir,
                              FLAGS.batch_size)
  weights = ('EMA' if params.trainer.optimizer_config.ema is not None
             else 'trained')
  return (f'exported {checkpoint} ({weights} weights) to {written}: '
          f'signatures {", ".join(serving.SIGNATURES.values())}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    line = _export()
  except (export_lib.ExportError, config_overrides.ConfigError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(line)
  return 0


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  app.run(main)
