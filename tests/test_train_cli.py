"""train.py end to end, as a user runs it (subprocesses, real TensorFlow)."""
import glob
import os
import subprocess
import sys

import pytest
import yaml

import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A few steps of the demo: 0.4 epochs of 1438 images at batch 128 = 4 steps,
# an evaluation every 2 steps, 2 logical CPU replicas.
SHORT_DEMO = ('trainer.train_epochs=0.4,trainer.eval_every_epochs=0.2,'
              'trainer.steps_per_loop=2,runtime.num_cpu_replicas=2')


def run_train(*args, data_dir=None, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  if data_dir:
    env['EFFNET_DATA_DIR'] = str(data_dir)
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'train.py'), *args],
      capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def assert_clean_user_error(result, fragment):
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert fragment in errors[0]


def test_list_prints_every_experiment():
  result = run_train('--experiment=list')
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1 + len(experiments.EXPERIMENT_NAMES)  # with a header
  assert [l.split()[0] for l in lines[1:]] == list(
      experiments.EXPERIMENT_NAMES)
  row = next(l for l in lines if l.startswith('effnet_b5_lars_65k'))
  for fragment in ('efficientnet-b5', '65536', 'paper_lars', '0.081',
                   '20.74', 'polynomial', '43'):
    assert fragment in row, row
  rms = next(l for l in lines if l.startswith('effnet_b2_rmsprop_4k'))
  for fragment in ('4096', 'rmsprop', '0.016', 'exponential', '5'):
    assert fragment in rms, rms


def test_unknown_experiment_and_bad_overrides_fail_cleanly(tmp_path):
  assert_clean_user_error(run_train('--experiment=effnet_b9_x'),
                          'effnet_b9_x')
  assert_clean_user_error(
      run_train('--gin_params=task.train_data.global_bach_size = 3',
                f'--model_dir={tmp_path}/m'), 'global_bach_size')
  assert_clean_user_error(
      run_train('--params_override=trainer.train_steps=3',
                f'--model_dir={tmp_path}/m'), 'trainer.train_epochs')
  assert_clean_user_error(
      run_train('--experiment=effnet_b5_lars_65k', f'--model_dir={tmp_path}/m'),
      'task.train_data.input_path')
  assert not os.path.exists(tmp_path / 'm')


def test_demo_few_steps_end_to_end(tmp_path):
  model_dir = tmp_path / 'run'
  result = run_train(f'--model_dir={model_dir}',
                     f'--params_override={SHORT_DEMO}',
                     '--gin_params=scaled_polynomial.warmup_epochs = 0.1',
                     data_dir=tmp_path / 'data')
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert '2 replicas (MirroredStrategy), 4 steps' in out
  train_lines = [l for l in out.splitlines() if l.startswith('step ')]
  assert train_lines and 'images/s' in train_lines[-1]
  assert 'lr ' in train_lines[-1] and 'ETA' in train_lines[-1]
  evals = [l for l in out.splitlines() if l.startswith('eval at step')]
  assert len(evals) >= 2 and 'top-1' in evals[-1], out[-3000:]

  # Digits converted once into Model Garden TFRecords in the data dir.
  assert glob.glob(str(tmp_path / 'data' / '**' / '*.tfrecord'),
                   recursive=True)
  with open(model_dir / 'params.yaml') as f:
    params = yaml.load(f, Loader=yaml.FullLoader)
  assert params['trainer']['train_steps'] == 4
  lr = params['trainer']['optimizer_config']['learning_rate']
  assert lr['scaled_polynomial']['warmup_epochs'] == 0.1
  gin_text = (model_dir / 'operative_config.train_and_eval.gin').read_text()
  assert 'warmup_epochs = 0.1' in gin_text
  assert glob.glob(str(model_dir / 'train' / 'events.out.tfevents.*'))
  assert glob.glob(str(model_dir / 'validation' / 'events.out.tfevents.*'))
  assert glob.glob(str(model_dir / 'ckpt-4*'))

  # Different params into the same model_dir: refused, nothing overwritten.
  before = (model_dir / 'params.yaml').read_text()
  other = run_train(f'--model_dir={model_dir}',
                    f'--params_override={SHORT_DEMO}',
                    '--gin_params=scaled_polynomial.warmup_epochs = 0.2',
                    data_dir=tmp_path / 'data')
  assert_clean_user_error(other, 'warmup_epochs')
  assert (model_dir / 'params.yaml').read_text() == before

  # A relaunch that changes only runtime fields (logging cadence, the eval
  # batch) resumes the finished run and records the change; --force_params
  # accepts any change.
  for extra, flag in ((',trainer.summary_interval=4,'
                       'task.validation_data.global_batch_size=64', ()),
                      (',task.model.dropout_rate=0.25', ('--force_params',))):
    resumed = run_train(f'--model_dir={model_dir}',
                        f'--params_override={SHORT_DEMO}{extra}',
                        '--gin_params=scaled_polynomial.warmup_epochs = 0.1',
                        *flag, data_dir=tmp_path / 'data')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'eval at step' not in resumed.stdout  # Nothing left to do.
  with open(model_dir / 'params_changes.yaml') as f:
    history = yaml.safe_load(f)
  assert set(history[0]['changes']) == {
      'trainer.summary_interval', 'task.validation_data.global_batch_size',
      'trainer.validation_steps'}
  assert history[1]['forced'] == ['task.model.dropout_rate']


def test_bad_record_met_mid_training_is_one_error_line(tmp_path):
  # 64 good 32x32 JPEG records in one file, but record 40 is corrupt: the
  # pre-flight check decodes only the first records, so training meets it.
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from official_ext.dataloaders import tfrecord_writer  # pylint: disable=g-import-not-at-top
  images = np.random.RandomState(0).randint(0, 255, (64, 32, 32, 3), np.uint8)
  (source,) = tfrecord_writer.write_image_classification_records(
      str(tmp_path / 'src'), images, np.arange(64) % 10, num_shards=1,
      image_format='jpeg')
  path = str(tmp_path / 'train-00000-of-00001')
  with tf.io.TFRecordWriter(path) as writer:
    for i, record in enumerate(tf.data.TFRecordDataset(source)):
      record = record.numpy()
      if i == 40:
        example = tf.train.Example.FromString(record)
        encoded = example.features.feature['image/encoded'].bytes_list
        encoded.value[0] = encoded.value[0][:len(encoded.value[0]) // 3]
        record = example.SerializeToString()
      writer.write(record)
  data = {'embedded_dataset': '', 'input_path': path, 'num_examples': 64,
          'global_batch_size': 16}
  override = {
      'task': {'train_data': dict(data, shuffle_buffer_size=64),
               'validation_data': data},
      'trainer': {'train_epochs': 2.0, 'eval_every_epochs': 2.0,
                  'steps_per_loop': 2},
      'runtime': {'num_cpu_replicas': 2},
  }
  override_file = tmp_path / 'override.yaml'
  override_file.write_text(yaml.safe_dump(override))
  result = run_train('--experiment=effnet_b0_digits', '--mode=train',
                     f'--model_dir={tmp_path}/m',
                     f'--params_override={override_file}')
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert errors == [
      f'error: bad input record: file {path} record 40: the record could '
      'not be parsed or its image could not be decoded (corrupt or '
      'unsupported image data) (DataConfig.on_bad_record is fail; set it to '
      'skip to drop bad records and count them in the logs)'], (
          result.stderr[-3000:])
