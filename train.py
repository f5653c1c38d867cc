r"""Training driver with Model Garden's flags.

  python train.py                               # the embedded digits demo
  python train.py --experiment=list             # every registered experiment
  python train.py --experiment=effnet_b5_lars_65k --mode=train_and_eval \
      --model_dir=gs://bucket/run --tpu=my-tpu --gin_file=gin/tpu_v3_1024.gin

Override precedence (lowest to highest): experiment defaults, --config_file,
--gin_file, --gin_params, --tpu, --params_override (see
official_ext/core/config_overrides.py).

The console shows one line per train loop, evaluation and checkpoint save;
`--verbosity=0` adds Model Garden's and Orbit's INFO log (their per-loop
output dicts) on stderr.
"""
import os
import sys

from official_ext.core import native_logs

# Before TensorFlow loads: its C++ notices (and, on hosts without a GPU, the
# failed CUDA probe) would bury the progress lines, and its Python warnings
# would print twice.
native_logs.quiet_tensorflow_logs()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf

import experiments  # pylint: disable=unused-import  (registers experiments)
from official_ext.core import config_overrides
from official_ext.core import divergence
from official_ext.core import experiment_list
from official_ext.core import experiment_runner
from official_ext.core import run_driver
from official_ext.core import tpu_slice
from official_ext.dataloaders import classification_input

MODES = ('train', 'eval', 'train_and_eval', 'continuous_eval')

flags.DEFINE_string(
    'experiment', 'effnet_b0_digits',
    'Registered experiment name, or "list" to print every experiment.')
flags.DEFINE_string('mode', 'train_and_eval',
                    f'What to run: one of {", ".join(MODES)}.')
flags.DEFINE_string(
    'model_dir', None,
    'Checkpoints, params.yaml, gin config and TensorBoard summaries. '
    'Default: runs/<experiment>.')
flags.DEFINE_multi_string(
    'config_file', None, 'YAML files overriding the experiment, in order.')
flags.DEFINE_string(
    'params_override', '',
    'Last override: YAML string/file or "a.b=1,c.d=x".')
flags.DEFINE_multi_string('gin_file', None, 'Gin files, in order.')
flags.DEFINE_multi_string('gin_params', None, 'Gin bindings, in order.')
flags.DEFINE_string('tpu', None, 'TPU name or address; selects TPUStrategy.')
flags.DEFINE_bool(
    'force_params', False,
    'Resume into a model_dir whose params.yaml differs in fields that change '
    'what the run computes (recorded in params_changes.yaml).')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.experiment == 'list':
    print(experiment_list.format_table(experiments.EXPERIMENT_NAMES))
    return 0
  if FLAGS.mode not in MODES:
    print(f'error: unknown --mode={FLAGS.mode!r}; use one of '
          f'{", ".join(MODES)}', file=sys.stderr)
    return 2
  try:
    params = config_overrides.parse_configuration(
        FLAGS.experiment,
        config_files=FLAGS.config_file,
        gin_files=FLAGS.gin_file,
        gin_params=FLAGS.gin_params,
        tpu=FLAGS.tpu,
        params_override=FLAGS.params_override)
    model_dir = FLAGS.model_dir or os.path.join('runs', FLAGS.experiment)
    run_driver.check_inputs(params, FLAGS.mode)
  except config_overrides.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  try:
    run_driver.run(params, FLAGS.mode, model_dir, experiment=FLAGS.experiment,
                   force_params=FLAGS.force_params)
  except (config_overrides.ConfigError, tpu_slice.TpuUnavailableError) as e:
    # The live replicas or the model_dir do not fit the params: found before
    # anything was built or written.
    print(f'error: {e}', file=sys.stderr)
    return 2
  except divergence.TrainingDiverged as e:
    latest = tf.train.latest_checkpoint(model_dir)
    kept = (f'the last good checkpoint {latest} is kept' if latest
            else 'no checkpoint was written')
    print(f'error: {e}; {kept} (lower the learning rate and rerun, or use '
          'a new --model_dir)', file=sys.stderr)
    return 3
  except Exception as e:  # pylint: disable=broad-except
    # Bad input data met during the run (a corrupt record with
    # on_bad_record='fail', no usable record in a full pass over the data, an
    # unreadable file), or the death of another worker of a multi-worker job,
    # reaches here as a TensorFlow OpError from inside the training or
    # evaluation loop: one line, no traceback. Anything else keeps its
    # traceback.
    # The input's message names the bad record: the splits are re-scanned
    # for it (evaluation's first: it is smaller).
    splits = [params.task.validation_data]
    if FLAGS.mode != 'eval' and FLAGS.mode != 'continuous_eval':
      splits.append(params.task.train_data)
    message = (classification_input.input_error_message(
        e, splits, params.task.model.num_classes)
               or experiment_runner.worker_failure_message(e))
    if message is None:
      raise
    print(f'error: {message}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  app.run(main)
