"""Bad input data: clear errors naming file and record, or counted skips."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from official_ext.core import config_overrides
from official_ext.core import run_driver
from official_ext.dataloaders import classification_input as ci
from official_ext.dataloaders import tfrecord_writer
from official_ext.vision.configs import image_classification as ic
from experiments import paper_table2  # pylint: disable=unused-import
from official.core import exp_factory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD_INDEX = 3


def _example(image=None, label=None) -> bytes:
  feature = {}
  if image is not None:
    feature['image/encoded'] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[image]))
  if label is not None:
    feature['image/class/label'] = tf.train.Feature(
        int64_list=tf.train.Int64List(value=[label]))
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


JPEG = tf.io.encode_jpeg(np.full((8, 8, 3), 90, np.uint8)).numpy()
GOOD = _example(JPEG, 1)
CASES = {
    'corrupt_jpeg': (_example(JPEG[:len(JPEG) // 2], 1), 'could not be decoded'),
    'not_an_image': (_example(b'hello', 1), 'could not be decoded'),
    'not_an_example': (b'\x01\x02 not a proto', 'could not be parsed'),
    'no_label': (_example(JPEG), 'has no label'),
    'no_image': (_example(None, 1), 'has no image'),
    'label_out_of_range': (_example(JPEG, 9), 'stored label 9'),
}


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory):
  d = tmp_path_factory.mktemp('bad')
  files = {}
  for name, (record, _) in CASES.items():
    path = str(d / f'{name}-00000-of-00001')
    with tf.io.TFRecordWriter(path) as writer:
      for i in range(6):
        writer.write(record if i == BAD_INDEX else GOOD)
    files[name] = path
  return files


def _params(path, mode, is_training, **kwargs):
  return ic.DataConfig(input_path=path, is_training=is_training,
                       global_batch_size=2, num_examples=6,
                       on_bad_record=mode, shuffle_buffer_size=6, **kwargs)


def _labels(dataset, batches=None):
  if batches:
    dataset = dataset.take(batches)
  return [l for _, y in dataset for l in y.numpy().tolist()]


@pytest.mark.parametrize('case', sorted(CASES))
def test_fail_names_file_and_record(bad_files, case):
  # The pipeline fails; the message naming the record comes from the
  # re-scan `input_error_message` runs after the failure.
  path = bad_files[case]
  params = _params(path, 'fail', False)
  dataset = ci.build_dataset(params, image_size=8, num_classes=4)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    _labels(dataset)
  message = ci.input_error_message(e.value, [params], num_classes=4)
  assert message.startswith(
      f'bad input record: file {path} record {BAD_INDEX}: '), message
  assert '\n' not in message
  assert CASES[case][1] in message
  assert 'on_bad_record is fail' in message


@pytest.mark.parametrize('case', sorted(CASES))
def test_skip_drops_and_counts_in_the_log(bad_files, case, capfd):
  path = bad_files[case]
  dataset = ci.build_dataset(_params(path, 'skip', False), image_size=8,
                             num_classes=4)
  labels = _labels(dataset)
  assert labels == [1] * 5 + [-1]  # 5 good records (label 1), padding.
  log = capfd.readouterr().err
  lines = [l for l in log.splitlines() if 'skipped' in l]
  assert len(lines) == 1, log[-3000:]
  assert '(1 so far in this input pipeline)' in lines[0]
  assert f'file {path} record {BAD_INDEX}' in lines[0]
  assert CASES[case][1] in lines[0]


def test_training_fail_and_skip(bad_files, capfd):
  path = bad_files['corrupt_jpeg']
  params = _params(path, 'fail', True)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    _labels(ci.build_dataset(params, image_size=8, num_classes=4), batches=6)
  assert f'file {path} record {BAD_INDEX}: ' in ci.input_error_message(
      e.value, [params], 4)
  labels = _labels(ci.build_dataset(_params(path, 'skip', True),
                                    image_size=8, num_classes=4), batches=10)
  assert labels == [1] * 20  # 4 epochs of 5 good records.
  lines = [l for l in capfd.readouterr().err.splitlines() if 'skipped' in l]
  # Every epoch read so far skipped record 3 once (prefetching reads ahead;
  # two epochs' copies can be adjacent after shuffling and share a line).
  totals = [int(re.search(r'\((\d+) so far in this input pipeline\)',
                          line).group(1)) for line in lines]
  assert totals == sorted(set(totals)) and totals[-1] >= 4, lines
  assert all(f'file {path} record {BAD_INDEX}' in line for line in lines)


def test_corrupt_tfrecord_file_fails_in_both_modes(tmp_path):
  paths = tfrecord_writer.write_image_classification_records(
      str(tmp_path / 'c'), np.full((10, 8, 8, 3), 50, np.uint8),
      np.arange(10) % 4, num_shards=2)
  data = bytearray(open(paths[0], 'rb').read())
  data[len(data) // 2] ^= 0xFF
  open(paths[0], 'wb').write(bytes(data))
  for mode in ('fail', 'skip'):
    params = _params(str(tmp_path / 'c-*'), mode, True)
    dataset = ci.build_dataset(params, image_size=8, num_classes=4)
    with pytest.raises(tf.errors.OpError) as e:
      _labels(dataset, batches=10)
    message = ci.input_error_message(e.value, [params], 4)
    assert message.startswith('reading the input failed'), message
    assert f'failed: file {paths[0]} record ' in message, message
    assert 'corrupted record' in message and '\n' not in message
  with pytest.raises(ValueError, match=f'cannot read TFRecord file {paths[0]}'):
    ci.build_dataset(_params(str(tmp_path / 'c-*'), 'fail', False),
                     image_size=8, num_classes=4)


# ----------------------------------------------------------------------------
# Pre-flight checks.
# ----------------------------------------------------------------------------


def test_check_source_errors(bad_files, tmp_path):
  path = bad_files['label_out_of_range']
  with pytest.raises(ValueError, match=f'label 9 of file {path} record '
                     f'{BAD_INDEX} minus label_offset 0 is outside'):
    ci.check_source(_params(path, 'skip', True), num_classes=4)
  # Labels 1 with label_offset 1 are fine; 0-based 1 with num_classes 1 not.
  good = bad_files['no_label']
  assert ci.check_source(_params(good, 'fail', True, label_offset=1), 4)
  with pytest.raises(ValueError, match='outside'):
    ci.check_source(_params(good, 'fail', True), num_classes=1)
  corrupt = bad_files['corrupt_jpeg']
  with pytest.raises(ValueError, match=f'the image of file {corrupt} record '
                     f'{BAD_INDEX} is missing or cannot be decoded'):
    ci.check_source(_params(corrupt, 'fail', True), 4)
  assert ci.check_source(_params(corrupt, 'skip', True), 4)
  all_bad = str(tmp_path / 'all-bad')
  with tf.io.TFRecordWriter(all_bad) as writer:
    for _ in range(3):
      writer.write(CASES['not_an_image'][0])
  with pytest.raises(ValueError, match='none of the 3 sampled records'):
    ci.check_source(_params(all_bad, 'skip', True), 4)
  with pytest.raises(ValueError, match='matches no files'):
    ci.check_source(_params(str(tmp_path / 'none-*'), 'fail', True), 4)
  with pytest.raises(ValueError, match='empty'):
    ci.check_source(_params('', 'fail', True), 4)
  with pytest.raises(ValueError, match='on_bad_record'):
    ci.check_source(_params(good, 'ignore', True), 4)
  tfds_kwargs = dict(tfds_data_dir=str(tmp_path), tfds_split='train')
  for name, fragment in (('no_such_dataset_xyz', 'unknown TFDS dataset'),
                         ('imagenet2012', 'is not prepared in tfds_data_dir')):
    with pytest.raises(ValueError, match=fragment) as e:
      ci.check_source(_params('', 'fail', True, tfds_name=name,
                              **tfds_kwargs), 4)
    assert name in str(e.value) and str(tmp_path) in str(e.value)
    assert '\n' not in str(e.value)
  with pytest.raises(ValueError, match='does not exist'):
    ci.check_source(_params('', 'fail', True, tfds_name='imagenet2012',
                            tfds_data_dir=str(tmp_path / 'missing'),
                            tfds_split='train'), 4)
  with pytest.raises(ValueError, match='set exactly one source'):
    ci.check_source(_params(good, 'fail', True, tfds_name='imagenet2012',
                            **tfds_kwargs), 4)


def _paper_params(train_path, **train_overrides):
  params = exp_factory.get_exp_config('effnet_b2_lars_16k')
  params.override({'task': {
      'model': {'num_classes': 4},
      'train_data': dict(input_path=train_path, **train_overrides),
      'validation_data': {'input_path': train_path}}}, is_strict=True)
  return params


def test_check_inputs_fails_before_training(bad_files, tmp_path):
  path = bad_files['label_out_of_range']
  with pytest.raises(config_overrides.ConfigError,
                     match=r'^task.train_data: label 9 of file'):
    run_driver.check_inputs(_paper_params(path), 'train')
  with pytest.raises(config_overrides.ConfigError,
                     match=r'^task.train_data: unknown TFDS dataset'):
    run_driver.check_inputs(_paper_params(
        '', tfds_name='no_such_dataset_xyz', tfds_split='train',
        tfds_data_dir=str(tmp_path)), 'train')
  with pytest.raises(config_overrides.ConfigError,
                     match=r'^task.train_data.input_path: .*matches no files'):
    run_driver.check_inputs(_paper_params(str(tmp_path / 'x-*')), 'train')


def test_train_py_reports_unknown_tfds_dataset_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'train.py'),
       '--experiment=effnet_b2_lars_16k', f'--model_dir={tmp_path}/m',
       '--params_override=task.train_data.tfds_name=no_such_dataset_xyz,'
       'task.train_data.tfds_split=train,'
       f'task.train_data.tfds_data_dir={tmp_path}'],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1
  assert 'unknown TFDS dataset' in errors[0]
  assert 'no_such_dataset_xyz' in errors[0] and str(tmp_path) in errors[0]
  assert not os.path.exists(tmp_path / 'm')


# ----------------------------------------------------------------------------
# No usable record: fail instead of reading forever.
# ----------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_training_with_no_usable_record_fails_instead_of_looping(tmp_path):
  all_bad = str(tmp_path / 'all-bad-00000-of-00001')
  with tf.io.TFRecordWriter(all_bad) as writer:
    for record, _ in CASES.values():
      writer.write(record)
  # skip: a full pass yields nothing -> a clear error, not an endless loop.
  dataset = ci.build_dataset(_params(all_bad, 'skip', True), image_size=8,
                             num_classes=4)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    next(iter(dataset))
  message = ci.input_error_message(e.value)
  assert message.startswith('no usable input record in a full pass'), message
  assert f'all {len(CASES)} records were bad' in message
  # fail: the first bad record stops training, and is named.
  params = _params(all_bad, 'fail', True)
  dataset = ci.build_dataset(params, image_size=8, num_classes=4)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    next(iter(dataset))
  message = ci.input_error_message(e.value, [params], 4)
  assert message.startswith(f'bad input record: file {all_bad} record '), (
      message)
  # No records at all, in both modes.
  empty = str(tmp_path / 'empty-00000-of-00001')
  tf.io.TFRecordWriter(empty).close()
  for mode in ('fail', 'skip'):
    dataset = ci.build_dataset(_params(empty, mode, True), image_size=8,
                               num_classes=4)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match='read no records'):
      next(iter(dataset))


def test_training_fail_names_the_corrupt_record_among_its_batch(tmp_path):
  # Batches of 4 over 12 records; only record 6 (in the middle of a batch)
  # is corrupt: the re-scan after the failure names it.
  path = str(tmp_path / 'one-bad-00000-of-00001')
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(12):
      writer.write(CASES['corrupt_jpeg'][0] if i == 6 else GOOD)
  params = _params(path, 'fail', True)
  params.global_batch_size = 4
  dataset = ci.build_dataset(params, image_size=8, num_classes=4)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    _labels(dataset, batches=10)
  assert ci.input_error_message(e.value, [params], 4) == (
      f'bad input record: file {path} record 6: {ci._REASONS[ci.UNDECODABLE]}'
      ' (DataConfig.on_bad_record is fail; set it to skip to drop bad '
      'records and count them in the logs)')


def test_tfds_bad_record_is_named_by_its_tfds_id(tmp_path, capfd):
  # 1-based labels read with label_offset 0: label 4 is outside 4 classes.
  from official_ext.tools import make_fixture  # pylint: disable=g-import-not-at-top
  fx = make_fixture.make_fixture(
      str(tmp_path / 'fx'), num_classes=4, num_train=4, num_eval=8,
      image_size=8, label_offset=1, tfds=True)
  kwargs = dict(tfds_name=fx.tfds_name, tfds_data_dir=fx.tfds_data_dir,
                tfds_split='validation', is_training=False,
                global_batch_size=4, num_examples=8, label_offset=0)
  params = ic.DataConfig(on_bad_record='fail', **kwargs)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    _labels(ci.build_dataset(params, image_size=8, num_classes=4))
  message = ci.input_error_message(e.value, [params], 4)
  assert re.match(
      rf'bad input record: TFDS {fx.tfds_name} record '
      rf'{fx.tfds_name}-validation\.tfrecord-00000-of-00001__\d+ \(data_dir '
      rf'{re.escape(fx.tfds_data_dir)}\): label outside .*stored label 4',
      message), message
  params = ic.DataConfig(on_bad_record='skip', **kwargs)
  labels = _labels(ci.build_dataset(params, image_size=8, num_classes=4))
  assert sorted(labels) == [-1, -1, 1, 1, 2, 2, 3, 3]  # Two 4s dropped.
  lines = [l for l in capfd.readouterr().err.splitlines() if 'skipped' in l]
  assert len(lines) == 2 and '(2 so far in this input pipeline)' in lines[1]
  assert all(f'TFDS {fx.tfds_name} record ' in l for l in lines), lines
