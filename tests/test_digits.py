"""Tests for official_ext.dataloaders.digits."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from official_ext.dataloaders import digits


def _read(pattern):
  out = []
  for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern))):
    f = tf.train.Example.FromString(record.numpy()).features.feature
    image = tf.io.decode_png(f['image/encoded'].bytes_list.value[0]).numpy()
    out.append((image, f['image/class/label'].int64_list.value[0]))
  return out


def test_default_split_constants():
  _, labels = digits.load_digits()
  assert len(labels) == digits.NUM_EXAMPLES == 1797
  train, evaluation = digits.stratified_split(labels, 0.2, seed=0)
  assert len(train) == digits.DIGITS_TRAIN_EXAMPLES == 1438
  assert len(evaluation) == digits.DIGITS_EVAL_EXAMPLES == 359
  assert digits.split_sizes(0.2) == (1438, 359)


@pytest.mark.parametrize('seed', [0, 3])
def test_split_is_stratified_disjoint_complete_deterministic(seed):
  _, labels = digits.load_digits()
  train, evaluation = digits.stratified_split(labels, 0.2, seed=seed)
  assert not set(train) & set(evaluation)
  assert sorted(np.concatenate([train, evaluation])) == list(range(1797))
  for c in range(10):
    n = int((labels == c).sum())
    assert int((labels[evaluation] == c).sum()) == int(np.floor(0.2 * n + .5))
  again = digits.stratified_split(labels, 0.2, seed=seed)
  np.testing.assert_array_equal(again[0], train)
  np.testing.assert_array_equal(again[1], evaluation)


def test_prepare_writes_records_and_reuses_them(tmp_path):
  splits = digits.prepare_digits(str(tmp_path), image_size=16)
  assert (splits.num_train, splits.num_eval, splits.num_classes) == (
      1438, 359, 10)
  train_files = sorted(glob.glob(splits.train_pattern))
  eval_files = sorted(glob.glob(splits.eval_pattern))
  assert len(train_files) == 4 and len(eval_files) == 2
  # Only the finished directory remains: no temporary directories.
  assert os.listdir(tmp_path) == [os.path.basename(splits.directory)]

  train, evaluation = _read(splits.train_pattern), _read(splits.eval_pattern)
  assert len(train) == 1438 and len(evaluation) == 359
  image = train[0][0]
  assert image.shape == (16, 16, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  assert max(int(im.max()) for im, _ in train[:50]) == 255
  assert np.bincount([l for _, l in evaluation]).tolist() == [
      36, 36, 35, 37, 36, 36, 36, 36, 35, 36]

  # The stored images are exactly the converted sklearn images of the split.
  images, labels = digits.load_digits()
  train_idx, eval_idx = digits.stratified_split(labels, 0.2, seed=0)
  rgb = digits.to_rgb_images(images, 16)
  for k in (0, 1, 358):
    np.testing.assert_array_equal(evaluation[k][0], rgb[eval_idx[k]])
    assert evaluation[k][1] == labels[eval_idx[k]]

  mtimes = {f: os.stat(f).st_mtime_ns for f in train_files + eval_files}
  again = digits.prepare_digits(str(tmp_path), image_size=16)
  assert again == splits
  assert {f: os.stat(f).st_mtime_ns for f in mtimes} == mtimes


def test_rebuilds_when_manifest_missing(tmp_path):
  splits = digits.prepare_digits(str(tmp_path), image_size=8)
  manifest = os.path.join(splits.directory, digits.MANIFEST)
  os.remove(manifest)  # As if a run crashed before completing.
  rebuilt = digits.prepare_digits(str(tmp_path), image_size=8)
  assert rebuilt == splits
  with open(manifest) as f:
    assert json.load(f)['num_eval'] == 359
  assert os.listdir(tmp_path) == [os.path.basename(splits.directory)]


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
  monkeypatch.setenv('EFFNET_DATA_DIR', str(tmp_path / 'env'))
  assert digits.default_cache_dir() == str(tmp_path / 'env')
  splits = digits.prepare_digits(image_size=8, eval_fraction=0.5, seed=1)
  assert splits.directory.startswith(str(tmp_path / 'env'))
  assert splits.num_train + splits.num_eval == 1797
