"""Tests for official_ext.dataloaders.tfrecord_writer."""
import os

import numpy as np
import pytest
import tensorflow as tf

from official.vision.dataloaders import classification_input as mg_input
from official_ext.dataloaders import tfrecord_writer


def _images(n, h=5, w=7, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _read(files):
  return [tf.train.Example.FromString(r.numpy())
          for r in tf.data.TFRecordDataset(files)]


def test_png_round_trip_is_exact_and_sharded_in_order(tmp_path):
  images = _images(10)
  labels = list(range(100, 110))
  files = tfrecord_writer.write_image_classification_records(
      str(tmp_path / 'data'), images, labels, num_shards=3)
  assert [os.path.basename(f) for f in files] == [
      'data-00000-of-00003.tfrecord', 'data-00001-of-00003.tfrecord',
      'data-00002-of-00003.tfrecord']
  assert sorted(os.listdir(tmp_path)) == sorted(
      os.path.basename(f) for f in files)  # No temporary files left.
  examples = _read(files)
  assert len(examples) == 10
  for i, ex in enumerate(examples):
    f = ex.features.feature
    image = tf.io.decode_png(f['image/encoded'].bytes_list.value[0]).numpy()
    np.testing.assert_array_equal(image, images[i])
    assert f['image/format'].bytes_list.value[0] == b'png'
    assert f['image/class/label'].int64_list.value[0] == labels[i]
    assert f['image/height'].int64_list.value[0] == 5
    assert f['image/width'].int64_list.value[0] == 7


def test_parses_with_model_garden_decoder(tmp_path):
  images = _images(4)
  files = tfrecord_writer.write_image_classification_records(
      str(tmp_path / 'mg'), images, [3, 1, 4, 1])
  decoder = mg_input.Decoder()
  for i, record in enumerate(tf.data.TFRecordDataset(files)):
    decoded = decoder.decode(record)
    assert int(decoded['image/class/label']) == [3, 1, 4, 1][i]
    image = tf.io.decode_image(decoded['image/encoded'], channels=3).numpy()
    np.testing.assert_array_equal(image, images[i])


def test_grey_and_ragged_images_and_jpeg(tmp_path):
  grey = np.full((6, 4), 200, np.uint8)
  rgb = np.full((3, 9, 3), 50, np.uint8)
  files = tfrecord_writer.write_image_classification_records(
      str(tmp_path / 'j'), [grey, rgb], [0, 1], image_format='jpeg',
      jpeg_quality=90)
  examples = _read(files)
  first = examples[0].features.feature
  assert first['image/format'].bytes_list.value[0] == b'jpeg'
  image = tf.io.decode_jpeg(first['image/encoded'].bytes_list.value[0])
  assert image.shape == (6, 4, 3)
  assert np.abs(image.numpy().astype(int) - 200).max() <= 2
  assert examples[1].features.feature['image/width'].int64_list.value[0] == 9


def test_refuses_to_overwrite_unless_asked(tmp_path):
  prefix = str(tmp_path / 'd')
  tfrecord_writer.write_image_classification_records(
      prefix, _images(4), [0, 1, 2, 3], num_shards=2)
  with pytest.raises(ValueError, match='d-00000-of-00002'):
    tfrecord_writer.write_image_classification_records(
        prefix, _images(4), [0, 1, 2, 3], num_shards=2)
  # A different shard count with the same prefix is refused too.
  with pytest.raises(ValueError, match='refusing to overwrite'):
    tfrecord_writer.write_image_classification_records(
        prefix, _images(3), [0, 1, 2], num_shards=1)
  files = tfrecord_writer.write_image_classification_records(
      prefix, _images(3, seed=1), [7, 8, 9], num_shards=1, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ['d-00000-of-00001.tfrecord']
  labels = [ex.features.feature['image/class/label'].int64_list.value[0]
            for ex in _read(files)]
  assert labels == [7, 8, 9]


def test_failure_leaves_no_files(tmp_path):
  images = list(_images(3)) + [np.zeros((4, 4, 3), np.float32)]
  with pytest.raises(ValueError, match='dtype'):
    tfrecord_writer.write_image_classification_records(
        str(tmp_path / 'bad'), images, [0, 1, 2, 3], num_shards=2)
  assert os.listdir(tmp_path) == []


def test_argument_errors(tmp_path):
  with pytest.raises(ValueError, match='labels'):
    tfrecord_writer.write_image_classification_records(
        str(tmp_path / 'x'), _images(2), [0])
  with pytest.raises(ValueError, match='num_shards'):
    tfrecord_writer.write_image_classification_records(
        str(tmp_path / 'x'), _images(2), [0, 1], num_shards=3)
  with pytest.raises(ValueError, match='image_format'):
    tfrecord_writer.write_image_classification_records(
        str(tmp_path / 'x'), _images(2), [0, 1], image_format='gif')
