"""TFRecord and TFDS sources, sharding, preprocessing and the fixture tool."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from official.vision.configs import common
from official.vision.dataloaders import classification_input as mg_input
from official_ext.dataloaders import classification_input as ci
from official_ext.dataloaders import tfrecord_writer
from official_ext.tools import make_fixture
from official_ext.vision.configs import image_classification as ic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = np.array(ci.MEAN_RGB, np.float32)
STD = np.array(ci.STDDEV_RGB, np.float32)


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  """4 classes, 1-based labels, as TFRecords and as a TFDS build."""
  out = tmp_path_factory.mktemp('fx') / 'fixture'
  return make_fixture.make_fixture(
      str(out), num_classes=4, num_train=24, num_eval=11, image_size=20,
      image_width=26, label_offset=1, num_shards=4, eval_shards=2, tfds=True)


def _context(num_pipelines, pipeline_id, num_replicas):
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines,
                                    input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=num_replicas)


def _tfrecord(fx, is_training, **kwargs):
  return ic.DataConfig(
      input_path=fx.train_pattern if is_training else fx.eval_pattern,
      is_training=is_training, label_offset=fx.label_offset, **kwargs)


def _tfds(fx, is_training, **kwargs):
  return ic.DataConfig(
      tfds_name=fx.tfds_name, tfds_data_dir=fx.tfds_data_dir,
      tfds_split='train' if is_training else 'validation',
      is_training=is_training, label_offset=fx.label_offset, **kwargs)


# ----------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('num_pipelines', [1, 2])
def test_tfrecord_and_tfds_give_identical_eval_batches(fixture, num_pipelines):
  # The TFRecord split has 2 files, the TFDS one 1: with 2 pipelines the
  # TFRecord pipelines read one file each and TFDS shards records, so the
  # pipelines' batches differ but together hold the same examples.
  kwargs = dict(global_batch_size=4, num_examples=fixture.num_eval)
  labels = []
  examples = {'a': [], 'b': []}
  for pipeline in range(num_pipelines):
    context = _context(num_pipelines, pipeline, num_pipelines)
    a = list(ci.build_dataset(_tfrecord(fixture, False, **kwargs),
                              image_size=16, input_context=context,
                              num_classes=4))
    b = list(ci.build_dataset(_tfds(fixture, False, **kwargs),
                              image_size=16, input_context=context,
                              num_classes=4))
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
      if num_pipelines == 1:
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
      for key, x, y in (('a', xa, ya), ('b', xb, yb)):
        examples[key].extend((int(l), im.tobytes())
                             for l, im in zip(y.numpy(), x.numpy()))
      labels.extend(ya.numpy().tolist())
  assert sorted(examples['a']) == sorted(examples['b'])
  real = [l for l in labels if l >= 0]
  assert len(real) == fixture.num_eval and set(real) <= set(range(4))
  assert labels.count(-1) == 12 - fixture.num_eval


def test_tfds_training_batches(fixture):
  params = _tfds(fixture, True, global_batch_size=8, shuffle_buffer_size=24,
                 dtype='bfloat16')
  for pipeline in range(2):  # One TFDS file < 2 pipelines: records sharded.
    dataset = ci.build_dataset(params, image_size=12, num_classes=4,
                               input_context=_context(2, pipeline, 2))
    for x, y in dataset.take(2):
      assert x.shape == (4, 12, 12, 3) and x.dtype == tf.bfloat16
      assert set(y.numpy().tolist()) <= set(range(4))


def _constant_jpeg_records(directory, name, values, num_shards):
  """JPEGs of constant grey `v` (a multiple of 8 codes the example)."""
  images = np.stack([np.full((10, 14, 3), v, np.uint8) for v in values])
  tfrecord_writer.write_image_classification_records(
      os.path.join(directory, name), images, np.zeros(len(values), int),
      num_shards=num_shards, image_format='jpeg', suffix='')
  return os.path.join(directory, f'{name}-*')


def _codes(images):
  pixels = images.astype(np.float32).reshape(len(images), -1, 3) * STD + MEAN
  return np.round(pixels.mean(axis=(1, 2)) / 8).astype(int).tolist()


@pytest.mark.parametrize('num_files', [5, 1])
def test_training_sharding_covers_every_record_once(tmp_path, num_files):
  # 30 records in num_files files; 2 pipelines. With 5 files, pipeline p
  # reads files p, p + 2, ...; with 1 file, records are sharded. Shuffling is
  # per epoch, so each pipeline's first len(shard) examples are its shard.
  values = 8 * np.arange(30)
  pattern = _constant_jpeg_records(str(tmp_path), 'r', values, num_files)
  files = ci.list_files(pattern)
  per_file = np.array_split(np.arange(30), num_files)
  seen = []
  for pipeline in range(2):
    params = ic.DataConfig(input_path=pattern, is_training=True,
                           global_batch_size=2, shuffle_buffer_size=64,
                           seed=3)
    dataset = ci.build_dataset(params, image_size=8,
                               input_context=_context(2, pipeline, 2))
    if num_files >= 2:
      mine = np.concatenate([per_file[f] for f in range(pipeline,
                                                        len(files), 2)])
    else:
      mine = np.arange(pipeline, 30, 2)
    codes = []
    for x, _ in dataset.take(len(mine)):  # Batches of 1 per pipeline.
      codes.extend(_codes(x.numpy()))
    assert sorted(codes) == sorted(mine.tolist())
    seen.extend(codes)
  assert sorted(seen) == list(range(30))


# ----------------------------------------------------------------------------
# Preprocessing.
# ----------------------------------------------------------------------------


def test_output_shapes_and_dtypes(fixture):
  for image_size in (8, 17, 32):
    for dtype in ('float32', 'bfloat16'):
      for is_training in (True, False):
        params = _tfrecord(fixture, is_training, global_batch_size=4,
                           num_examples=fixture.num_eval, dtype=dtype,
                           shuffle_buffer_size=8)
        dataset = ci.build_dataset(params, image_size=image_size,
                                   num_classes=4)
        x, y = next(iter(dataset))
        assert x.shape == (4, image_size, image_size, 3)
        assert x.dtype == tf.as_dtype(dtype) and y.dtype == tf.int32
        assert np.isfinite(x.numpy().astype(np.float32)).all()


def test_eval_crop_is_deterministic_and_centered(fixture):
  params = _tfrecord(fixture, False, global_batch_size=4,
                     num_examples=fixture.num_eval)
  runs = [np.concatenate([x.numpy() for x, _ in ci.build_dataset(
      params, image_size=12, num_classes=4)]) for _ in range(2)]
  np.testing.assert_array_equal(runs[0], runs[1])
  # The first eval record by hand: center crop 12/(12+32) of the 20-pixel
  # side, the reference's TF1 bicubic resize (no half-pixel centers),
  # normalize.
  record = next(ci.iter_tfrecord_file(ci.list_files(fixture.eval_pattern)[0]))
  feature = tf.train.Example.FromString(record[1]).features.feature
  side = int(12 / 44 * 20)
  top, left = (20 - side + 1) // 2, (26 - side + 1) // 2
  crop = tf.io.decode_and_crop_jpeg(
      feature['image/encoded'].bytes_list.value[0], [top, left, side, side])
  resized = tf.compat.v1.image.resize_bicubic(crop[tf.newaxis], [12, 12])[0]
  expected = (resized.numpy() - MEAN) / STD
  np.testing.assert_allclose(runs[0][0], expected, atol=1e-4)


def test_jpeg_decode_and_crop_matches_decode_then_slice():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
  encoded = tf.io.encode_jpeg(image, quality=95)
  window = tf.constant([5, 9, 30, 40])
  fast = ci.decode_and_crop(encoded, lambda shape: window).numpy()
  full = tf.io.decode_jpeg(encoded).numpy()[5:35, 9:49]
  assert fast.shape == (30, 40, 3)
  assert np.abs(fast.astype(int) - full.astype(int)).max() <= 2
  png = tf.io.encode_png(image)
  np.testing.assert_array_equal(
      ci.decode_and_crop(png, lambda shape: window).numpy(),
      image[5:35, 9:49])


def test_random_crop_window_bounds_on_decoded_jpegs():
  # Through the JPEG path: decoded crops respect the area/aspect bounds.
  image = tf.io.encode_jpeg(np.zeros((60, 80, 3), np.uint8))
  window_fn = lambda shape: ci.train_crop_window(  # pylint: disable=g-long-lambda
      shape, 16, (0.08, 1.0), (3 / 4, 4 / 3), 32)

  @tf.function
  def shapes():
    return tf.stack([tf.shape(ci.decode_and_crop(image, window_fn))[:2]
                     for _ in range(30)])

  hw = np.concatenate([shapes().numpy() for _ in range(3)])
  center = int(16 / 48 * 60)
  for h, w in hw.tolist():
    if (h, w) == (center, center):
      continue  # The reference's fallback.
    assert 0.08 * 4800 * 0.97 <= h * w <= 4800
    assert 3 / 4 * (1 - 2 / h) <= w / h <= 4 / 3 * (1 + 2 / h)


@pytest.mark.parametrize('aug', ['randaug', 'autoaug'])
def test_randaugment_and_autoaugment_change_the_images(fixture, aug):
  # One batch = one pass over the 24 training records, with no crop and no
  # flip: without an augmenter every image equals one of the plain images
  # exactly (decode and resize are deterministic), so the augmented images
  # must be far from every plain image, or the augmenter did nothing.
  aug_type = common.Augmentation(
      type=aug, randaug=common.RandAugment(num_layers=2, magnitude=17),
      autoaug=common.AutoAugment(augmentation_name='v0'))
  kwargs = dict(global_batch_size=fixture.num_train, shuffle_buffer_size=8,
                aug_crop=False, aug_rand_hflip=False, seed=3)
  params = _tfrecord(fixture, True, aug_type=aug_type, **kwargs)
  assert type(ci.build_augmenter(params)).__name__ == {
      'randaug': 'RandAugment', 'autoaug': 'AutoAugment'}[aug]
  x, y = next(iter(ci.build_dataset(params, image_size=16, num_classes=4)))
  plain, plain_y = next(iter(ci.build_dataset(
      _tfrecord(fixture, True, **kwargs), image_size=16, num_classes=4)))
  assert x.shape == (fixture.num_train, 16, 16, 3) and x.dtype == tf.float32
  assert sorted(y.numpy()) == sorted(plain_y.numpy())  # The same records.
  x, plain = x.numpy(), plain.numpy()
  assert np.isfinite(x).all()
  assert (x >= (0 - MEAN) / STD - 0.05).all()
  assert (x <= (255 - MEAN) / STD + 0.05).all()
  # Mean absolute distance (in normalized units) of each augmented image to
  # the nearest plain image of its class.
  nearest = np.array([
      min(np.abs(image - other).mean()
          for other, label in zip(plain, plain_y.numpy()) if label == y_i)
      for image, y_i in zip(x, y.numpy())])
  changed = nearest > 0.05
  # RandAugment applies 2 ops to every image; AutoAugment a sub-policy whose
  # ops each apply with some probability. A no-op augmenter changes none.
  assert changed.mean() >= (0.75 if aug == 'randaug' else 0.4), nearest
  assert np.median(nearest) > 0.1, nearest


def test_bfloat16_augmented_batches(fixture):
  aug_type = common.Augmentation(
      type='randaug', randaug=common.RandAugment(num_layers=2, magnitude=17))
  params = _tfrecord(fixture, True, global_batch_size=4,
                     shuffle_buffer_size=8, aug_type=aug_type,
                     dtype='bfloat16')
  x, _ = next(iter(ci.build_dataset(params, image_size=16, num_classes=4)))
  assert x.shape == (4, 16, 16, 3) and x.dtype == tf.bfloat16
  assert np.isfinite(x.numpy().astype(np.float32)).all()


# ----------------------------------------------------------------------------
# Fixture tool.
# ----------------------------------------------------------------------------


def test_fixture_images_depend_on_class():
  labels = np.repeat(np.arange(6), 8)
  images = make_fixture.class_images(labels, 24, 24, seed=0).astype(float)
  means = np.stack([images[labels == c].mean(axis=0) for c in range(6)])
  within = np.mean([np.abs(images[labels == c] - means[c]).mean()
                    for c in range(6)])
  between = np.mean([np.abs(means[a] - means[b]).mean()
                     for a in range(6) for b in range(a + 1, 6)])
  assert between > 2 * within


def test_fixture_records_are_model_garden_format(fixture):
  files = ci.list_files(fixture.train_pattern)
  assert [os.path.basename(f) for f in files] == [
      f'train-0000{i}-of-00004' for i in range(4)]
  decoder = mg_input.Decoder()
  record = next(ci.iter_tfrecord_file(files[0]))[1]
  decoded = decoder.decode(tf.constant(record))
  assert 1 <= int(decoded['image/class/label']) <= 4
  assert tf.io.is_jpeg(decoded['image/encoded'])
  assert tf.io.decode_jpeg(decoded['image/encoded']).shape == (20, 26, 3)


def _run_tool(*args):
  return subprocess.run(
      [sys.executable, '-m', 'official_ext.tools.make_fixture', *args],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def _assert_one_line_error(result, fragment):
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error:'), result.stderr
  assert fragment in lines[0]


def test_make_fixture_cli_writes_and_refuses_overwrite(tmp_path):
  out = tmp_path / 'fx'
  args = ['--out', str(out), '--num_classes', '3', '--train', '9', '--eval',
          '4', '--image_size', '16', '--num_shards', '3']
  result = _run_tool(*args)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(out)) == [
      'fixture.json', 'train-00000-of-00003', 'train-00001-of-00003',
      'train-00002-of-00003', 'validation-00000-of-00002',
      'validation-00001-of-00002']
  before = (out / 'train-00000-of-00003').read_bytes()
  _assert_one_line_error(_run_tool(*args), 'already exists')
  assert (out / 'train-00000-of-00003').read_bytes() == before
  result = _run_tool(*args, '--overwrite', '--num_shards', '1')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'train-00000-of-00001' in os.listdir(out)
  assert 'train-00000-of-00003' not in os.listdir(out)
  fx = make_fixture.load_fixture(str(out))
  assert (fx.num_train, fx.num_eval, fx.num_classes) == (9, 4, 3)


def test_make_fixture_cli_bad_arguments(tmp_path):
  base = ['--out', str(tmp_path / 'x'), '--train', '4', '--eval', '2',
          '--image_size', '8']
  _assert_one_line_error(_run_tool(*base, '--num_classes', '0'),
                         'num_classes')
  _assert_one_line_error(_run_tool(*base, '--num_classes', '2',
                                   '--label_offset', '2'), 'label_offset')
  _assert_one_line_error(_run_tool(*base, '--num_classes', 'two'),
                         'num_classes')
  _assert_one_line_error(_run_tool(*base, '--num_classes', '2',
                                   '--num_shards', '9'), 'num_shards')
  _assert_one_line_error(_run_tool('--num_classes', '2'), '--out')
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'keep.txt').write_text('x')
  _assert_one_line_error(
      _run_tool('--out', str(tmp_path / 'other'), '--train', '4', '--eval',
                '2', '--image_size', '8', '--num_classes', '2',
                '--overwrite'), 'not a fixture')
  assert (tmp_path / 'other' / 'keep.txt').exists()
  assert not (tmp_path / 'x').exists()
