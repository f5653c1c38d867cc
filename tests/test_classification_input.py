"""Tests for official_ext.dataloaders.classification_input."""
import collections
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from official_ext.dataloaders import classification_input as ci
from official_ext.dataloaders import tfrecord_writer
from official_ext.vision.configs import image_classification as ic
from tests import conftest

MEAN = np.array(ci.MEAN_RGB, np.float32)
STD = np.array(ci.STDDEV_RGB, np.float32)


def _index_images(indices, size=6):
  """Constant-colour images whose colour encodes the example index."""
  images = np.zeros((len(indices), size, size, 3), np.uint8)
  for k, idx in enumerate(indices):
    images[k] = (idx % 256, idx // 256, 7)
  return images


def _decode_index(image):
  """Inverse of _index_images after normalization (image [S, S, 3])."""
  pixel = np.asarray(image, np.float32).reshape(-1, 3) * STD + MEAN
  assert np.ptp(pixel, axis=0).max() < 0.5  # Still a constant image.
  r, g, b = np.round(pixel[0]).astype(int)
  assert b == 7
  return int(r + 256 * g)


def _write(directory, name, num_examples, num_shards, size=6, offset=0):
  indices = np.arange(num_examples)
  tfrecord_writer.write_image_classification_records(
      os.path.join(directory, name), _index_images(indices, size),
      indices + offset, num_shards=num_shards)
  return os.path.join(directory, f'{name}-*')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('records'))
  return {
      'eval': _write(d, 'eval', 1003, num_shards=3),
      'train4': _write(d, 'train4', 40, num_shards=4),
      'train1': _write(d, 'train1', 30, num_shards=1),
      'one_based': _write(d, 'one_based', 30, num_shards=2, offset=1),
      'dir': d,
  }


def _config(input_path, **kwargs):
  return ic.DataConfig(input_path=input_path, **kwargs)


def _context(num_pipelines, pipeline_id, num_replicas):
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines,
                                    input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=num_replicas)


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('shape,static', [
    ((7, 5, 3), True), ((7, 5, 3), False), ((2, 4, 6, 3), True)])
def test_normalize_matches_numpy_per_channel(shape, static):
  # Every pixel and channel differs, so a mean/stddev applied to the wrong
  # axis or position shows.
  image = np.random.default_rng(1).uniform(-20, 280, shape).astype(np.float32)
  expected = (image - MEAN) / STD
  spec = tf.TensorSpec(shape if static else [None] * len(shape), tf.float32)
  dataset = tf.data.Dataset.from_generator(lambda: iter([image]),
                                           output_signature=spec)
  (normalized,) = list(dataset.map(ci.normalize).as_numpy_iterator())
  assert normalized.shape == shape
  np.testing.assert_allclose(normalized, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('image_size,dtype,method', [
    (8, 'float32', 'bicubic'), (12, 'bfloat16', 'bilinear')])
def test_train_shapes_dtypes_normalization(data, image_size, dtype, method):
  params = _config(data['train4'], is_training=True, global_batch_size=8,
                   dtype=dtype, resize_method=method, shuffle_buffer_size=16)
  dataset = ci.build_dataset(params, image_size=image_size)
  assert dataset.element_spec[0].shape.as_list() == [8, image_size,
                                                      image_size, 3]
  assert dataset.element_spec[0].dtype == tf.as_dtype(dtype)
  assert dataset.element_spec[1].dtype == tf.int32
  tol = 1e-4 if dtype == 'float32' else 2e-2
  for images, labels in dataset.take(3):
    images = images.numpy().astype(np.float32)
    for image, label in zip(images, labels.numpy()):
      assert 0 <= label < 40
      # Constant images stay constant through crop/flip/resize; the value
      # is the normalized colour of this example.
      expected = (np.array([label, 0, 7], np.float32) - MEAN) / STD
      np.testing.assert_allclose(image.reshape(-1, 3),
                                 np.broadcast_to(expected, (image_size ** 2,
                                                            3)),
                                 atol=tol, rtol=tol)


def test_train_random_content_in_range_and_batched_per_replica(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 20, 30, 3), dtype=np.uint8)
  tfrecord_writer.write_image_classification_records(
      str(tmp_path / 'r'), images, np.arange(16), num_shards=2)
  # Bilinear never leaves [0, 255]; bicubic may overshoot, and as in the
  # reference code it is not clipped.
  params = _config(str(tmp_path / 'r-*'), is_training=True,
                   global_batch_size=16, shuffle_buffer_size=16,
                   resize_method='bilinear')
  dataset = ci.build_dataset(params, image_size=10,
                             input_context=_context(1, 0, 4))
  for x, y in dataset.take(4):
    assert x.shape == (4, 10, 10, 3) and y.shape == (4,)
    x = x.numpy()
    assert (x >= (0 - MEAN) / STD - 1e-5).all()
    assert (x <= (255 - MEAN) / STD + 1e-5).all()


def _labels_seen(dataset, batches):
  seen = set()
  for _, labels in dataset.take(batches):
    seen.update(labels.numpy().tolist())
  return seen


def test_train_shards_files_across_pipelines(data):
  # 4 files of 10 examples, 2 pipelines: pipeline i reads files i and i + 2.
  params = _config(data['train4'], is_training=True, global_batch_size=8,
                   shuffle_buffer_size=8, seed=1)
  for pipeline in (0, 1):
    dataset = ci.build_dataset(params, image_size=4,
                               input_context=_context(2, pipeline, 2))
    assert dataset.element_spec[0].shape[0] == 4
    expected = {i for f in (pipeline, pipeline + 2)
                for i in range(10 * f, 10 * f + 10)}
    assert _labels_seen(dataset, 30) == expected


def test_train_shards_records_when_fewer_files_than_pipelines(data):
  params = _config(data['train1'], is_training=True, global_batch_size=6,
                   shuffle_buffer_size=10)
  for pipeline in range(3):
    dataset = ci.build_dataset(params, image_size=4,
                               input_context=_context(3, pipeline, 3))
    assert _labels_seen(dataset, 40) == set(range(pipeline, 30, 3))


def test_label_offset(data):
  for is_training in (True, False):
    params = _config(data['one_based'], is_training=is_training,
                     global_batch_size=5, label_offset=1, num_examples=30,
                     aug_crop=False, aug_rand_hflip=False)
    dataset = ci.build_dataset(params, image_size=6)
    for images, labels in dataset.take(3):
      for image, label in zip(images.numpy(), labels.numpy()):
        assert label == _decode_index(image)


def test_input_path_forms_and_missing_pattern(data):
  d = data['dir']
  comma = f"{os.path.join(d, 'train4-*')},{os.path.join(d, 'train1-*')}"
  as_list = [os.path.join(d, 'train4-*'), os.path.join(d, 'train1-*')]
  assert ci.list_files(comma) == ci.list_files(as_list)
  assert len(ci.list_files(as_list)) == 5
  missing = os.path.join(d, 'nothing-here-*.tfrecord')
  params = _config([data['train4'], missing], is_training=True,
                   global_batch_size=2)
  with pytest.raises(ValueError, match='nothing-here'):
    ci.build_dataset(params, image_size=4)
  with pytest.raises(ValueError, match='empty'):
    ci.build_dataset(_config('', global_batch_size=2), image_size=4)


# ----------------------------------------------------------------------------
# Crop windows.
# ----------------------------------------------------------------------------


def test_random_crop_window_respects_area_and_aspect_bounds():
  height, width = 240, 320
  shape = tf.constant([height, width, 3])
  area_range, aspect_range = (0.08, 1.0), (3. / 4., 4. / 3.)
  center = ci.center_crop_window(shape, 224, 32).numpy().tolist()

  @tf.function
  def sample():
    return tf.stack([
        ci.train_crop_window(shape, 224, area_range, aspect_range, 32)
        for _ in range(50)])

  windows = np.concatenate([sample().numpy() for _ in range(20)])
  areas, fallbacks = [], 0
  for y, x, h, w in windows.tolist():
    assert 0 <= y and 0 <= x and y + h <= height and x + w <= width
    assert h > 0 and w > 0
    if [y, x, h, w] == center:
      fallbacks += 1
      continue
    assert (h, w) != (height, width)  # A full-image window is replaced.
    area = h * w / (height * width)
    assert area_range[0] - 0.005 <= area <= area_range[1]
    # Rounding to whole pixels moves the aspect ratio by at most ~1 px.
    assert aspect_range[0] * (1 - 2 / h) <= w / h <= aspect_range[1] * (
        1 + 2 / h)
    areas.append(area)
  assert len(areas) > 0.8 * len(windows)
  assert min(areas) < 0.15 and max(areas) > 0.85


def test_center_crop_window_matches_reference():
  # side = int(224 / 256 * min(h, w)), offsets ((h - side) + 1) // 2.
  assert ci.center_crop_window(tf.constant([300, 400, 3]), 224,
                               32).numpy().tolist() == [19, 69, 262, 262]
  assert ci.center_crop_window(tf.constant([8, 8, 3]), 8,
                               0).numpy().tolist() == [0, 0, 8, 8]


def test_sampling_failure_falls_back_to_center_crop():
  # An area range that cannot be met forces the whole-image (bad) sample.
  shape = tf.constant([50, 50, 3])
  window = ci.train_crop_window(shape, 32, (0.99, 1.0), (3.9, 4.0), 32)
  assert window.numpy().tolist() == ci.center_crop_window(
      shape, 32, 32).numpy().tolist()


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


def _eval_pipeline_contents(dataset):
  """[(batch labels, batch decoded indices)] with padding checks."""
  batches = []
  for images, labels in dataset:
    labels = labels.numpy()
    indices = []
    for image, label in zip(images.numpy(), labels):
      if label == ci.PADDING_LABEL:
        assert not image.any()
        indices.append(-1)
      else:
        indices.append(_decode_index(image))
        assert indices[-1] == label
    batches.append((labels, indices))
  return batches


@pytest.mark.parametrize('global_batch', [64, 2048])
def test_eval_two_pipelines_cover_every_example_once(data, global_batch):
  num_examples, num_replicas = 1003, 4
  params = _config(data['eval'], is_training=False,
                   global_batch_size=global_batch, num_examples=num_examples)
  steps = math.ceil(num_examples / global_batch)
  per_replica = global_batch // num_replicas
  seen = collections.Counter()
  for pipeline in (0, 1):
    dataset = ci.build_dataset(params, image_size=4,
                               input_context=_context(2, pipeline,
                                                      num_replicas))
    batches = _eval_pipeline_contents(dataset)
    # Every pipeline yields steps * (replicas per pipeline) full batches.
    assert len(batches) == steps * (num_replicas // 2)
    assert all(len(labels) == per_replica for labels, _ in batches)
    assert int(dataset.cardinality()) == len(batches)
    flat = [i for _, indices in batches for i in indices]
    real = [i for i in flat if i >= 0]
    # Pipeline p holds, in order, its own files' examples when they fit the
    # padded length, else examples p, p + 2, ...; then only padding.
    files = ci.list_files(params.input_path)
    counts = ci.file_record_counts(files)
    if ci.eval_reads_own_files(counts, num_examples, global_batch, 2):
      starts = np.cumsum([0] + counts)
      expected = [i for j in ci.pipeline_files(len(files), 2, pipeline)
                  for i in range(starts[j], starts[j + 1])]
    else:
      expected = list(range(pipeline, num_examples, 2))
    assert real == expected
    assert flat[len(real):] == [-1] * (len(flat) - len(real))
    seen.update(real)
  assert sorted(seen) == list(range(num_examples))
  assert set(seen.values()) == {1}


def test_eval_single_pipeline_deterministic_and_center_cropped(data):
  params = _config(data['eval'], is_training=False, global_batch_size=100,
                   num_examples=1003, eval_crop_padding=32)
  first = [l.numpy() for _, l in ci.build_dataset(params, image_size=4)]
  second = [l.numpy() for _, l in ci.build_dataset(params, image_size=4)]
  np.testing.assert_array_equal(np.concatenate(first),
                                np.concatenate(second))
  labels = np.concatenate(first)
  assert len(labels) == 1100
  np.testing.assert_array_equal(labels[:1003], np.arange(1003))
  assert (labels[1003:] == -1).all()


def test_eval_center_crop_content(tmp_path):
  # 8x8 image: left half 0, right half 200; a 4/(4+4) center crop keeps
  # columns 2..5 and so both halves, resized (bilinear) to 4x4.
  image = np.zeros((8, 8, 3), np.uint8)
  image[:, 4:] = 200
  tfrecord_writer.write_image_classification_records(
      str(tmp_path / 'c'), [image], [0])
  params = _config(str(tmp_path / 'c-*'), is_training=False,
                   global_batch_size=1, num_examples=1, eval_crop_padding=4,
                   resize_method='bilinear')
  (x, _), = list(ci.build_dataset(params, image_size=4))
  pixels = x.numpy()[0] * STD + MEAN
  np.testing.assert_allclose(pixels[:, :, 0], [[0, 0, 200, 200]] * 4,
                             atol=1e-3)


def test_eval_num_examples_errors(data):
  for bad in (0, 1002):
    params = _config(data['eval'], is_training=False, global_batch_size=64,
                     num_examples=bad)
    with pytest.raises(ValueError, match='num_examples'):
      ci.build_dataset(params, image_size=4)


def test_eval_under_mirrored_strategy(data):
  strategy = conftest.cpu_strategy(4)
  params = _config(data['eval'], is_training=False, global_batch_size=64,
                   num_examples=1003)
  dist = strategy.distribute_datasets_from_function(
      lambda ctx: ci.build_dataset(params, image_size=4, input_context=ctx))
  steps, labels = 0, []
  for _, y in dist:
    steps += 1
    for local in strategy.experimental_local_results(y):
      assert local.shape == (16,)
      labels.extend(local.numpy().tolist())
  assert steps == math.ceil(1003 / 64)
  real = sorted(l for l in labels if l >= 0)
  assert real == list(range(1003))
  assert len(labels) == steps * 64
