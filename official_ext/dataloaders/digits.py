"""Embedded demo dataset: scikit-learn's handwritten digits as TFRecords.

`sklearn.datasets.load_digits` ships with scikit-learn (no download): 1797
real 8x8 grey images of the digits 0-9 with values 0..16. `prepare_digits`
converts them once into Model Garden-format TFRecords (PNG, uint8 RGB,
bilinearly upscaled to image_size x image_size) with a deterministic
stratified held-out eval split, and reuses them afterwards.

Crash/concurrency safety: a dataset is built in a fresh temporary directory,
`manifest.json` (counts and file names) is written last, and the directory is
renamed into place. A directory is only used if its manifest exists and lists
files that all exist; anything else is rebuilt.
"""
import dataclasses
import json
import os
import shutil
import uuid
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from official_ext.dataloaders import tfrecord_writer

NUM_CLASSES = 10
NUM_EXAMPLES = 1797
DEFAULT_EVAL_FRACTION = 0.2
NUM_TRAIN_SHARDS = 4
NUM_EVAL_SHARDS = 2
MANIFEST = 'manifest.json'
_FORMAT_VERSION = 1

# Split sizes for the default eval_fraction (0.2): per class
# floor(0.2 * n_class + 0.5) held out, summed over the 10 classes.
DIGITS_TRAIN_EXAMPLES = 1438
DIGITS_EVAL_EXAMPLES = 359


@dataclasses.dataclass(frozen=True)
class DigitsSplits:
  """Where the prepared digits TFRecords are and how many examples they hold."""
  train_pattern: str
  eval_pattern: str
  num_train: int
  num_eval: int
  num_classes: int = NUM_CLASSES
  directory: str = ''


def default_cache_dir() -> str:
  """$EFFNET_DATA_DIR if set, else ~/.cache/effnet_supercomputer/digits."""
  env = os.environ.get('EFFNET_DATA_DIR')
  if env:
    return env
  return os.path.join(os.path.expanduser('~'), '.cache',
                      'effnet_supercomputer', 'digits')


def load_digits() -> Tuple[np.ndarray, np.ndarray]:
  """The 1797 raw digits: images uint8 [N, 8, 8] with values 0..16, labels."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  return digits.images.astype(np.uint8), digits.target.astype(np.int64)


def stratified_split(labels: np.ndarray, eval_fraction: float,
                     seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """Deterministic stratified split into (train_indices, eval_indices).

  Per class, floor(eval_fraction * n + 0.5) examples (at least 1 and at most
  n - 1 when 0 < eval_fraction < 1) chosen by a seeded permutation go to eval.
  Both index arrays are returned in a seeded shuffled order (classes mixed).
  """
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f'eval_fraction must be in (0, 1), got {eval_fraction}')
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  train, evaluation = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    n_eval = int(np.floor(eval_fraction * len(idx) + 0.5))
    n_eval = min(max(n_eval, 1), len(idx) - 1)
    evaluation.append(idx[:n_eval])
    train.append(idx[n_eval:])
  train = np.concatenate(train)
  evaluation = np.concatenate(evaluation)
  return train[rng.permutation(len(train))], evaluation[
      rng.permutation(len(evaluation))]


def split_sizes(eval_fraction: float = DEFAULT_EVAL_FRACTION) -> Tuple[int,
                                                                        int]:
  """(num_train, num_eval) of the digits split for `eval_fraction`."""
  _, labels = load_digits()
  train, evaluation = stratified_split(labels, eval_fraction, seed=0)
  return len(train), len(evaluation)


def to_rgb_images(images: np.ndarray, image_size: int) -> np.ndarray:
  """0..16 grey [N, 8, 8] -> uint8 [N, S, S, 3] (0..255, bilinear upscale)."""
  x = images.astype(np.float32) * (255.0 / 16.0)
  x = tf.image.resize(x[..., None], [image_size, image_size],
                      method='bilinear').numpy()
  x = np.clip(np.round(x), 0, 255).astype(np.uint8)
  return np.repeat(x, 3, axis=-1)


def _subdir_name(image_size: int, eval_fraction: float, seed: int) -> str:
  return (f'digits-v{_FORMAT_VERSION}-size{image_size}-'
          f'eval{eval_fraction:g}-seed{seed}')


def _load_manifest(directory: str) -> Optional[dict]:
  """The manifest if `directory` holds a complete dataset, else None."""
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      manifest = json.load(f)
    names = manifest['train_files'] + manifest['eval_files']
    if not all(os.path.isfile(os.path.join(directory, n)) for n in names):
      return None
    return manifest
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _splits(directory: str, manifest: dict) -> DigitsSplits:
  return DigitsSplits(
      train_pattern=os.path.join(
          directory, f'train-*-of-{len(manifest["train_files"]):05d}.tfrecord'),
      eval_pattern=os.path.join(
          directory, f'eval-*-of-{len(manifest["eval_files"]):05d}.tfrecord'),
      num_train=manifest['num_train'],
      num_eval=manifest['num_eval'],
      num_classes=manifest['num_classes'],
      directory=directory)


def _build(directory: str, image_size: int, eval_fraction: float,
           seed: int) -> None:
  images, labels = load_digits()
  train_idx, eval_idx = stratified_split(labels, eval_fraction, seed)
  rgb = to_rgb_images(images, image_size)
  train_files = tfrecord_writer.write_image_classification_records(
      os.path.join(directory, 'train'), rgb[train_idx], labels[train_idx],
      num_shards=NUM_TRAIN_SHARDS)
  eval_files = tfrecord_writer.write_image_classification_records(
      os.path.join(directory, 'eval'), rgb[eval_idx], labels[eval_idx],
      num_shards=NUM_EVAL_SHARDS)
  manifest = {
      'format_version': _FORMAT_VERSION,
      'source': 'sklearn.datasets.load_digits',
      'image_size': image_size,
      'eval_fraction': eval_fraction,
      'seed': seed,
      'num_train': int(len(train_idx)),
      'num_eval': int(len(eval_idx)),
      'num_classes': NUM_CLASSES,
      'train_files': [os.path.basename(f) for f in train_files],
      'eval_files': [os.path.basename(f) for f in eval_files],
  }
  temp = os.path.join(directory, f'.{MANIFEST}.tmp')
  with open(temp, 'w') as f:
    json.dump(manifest, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temp, os.path.join(directory, MANIFEST))


def prepare_digits(cache_dir: Optional[str] = None,
                   image_size: int = 32,
                   eval_fraction: float = DEFAULT_EVAL_FRACTION,
                   seed: int = 0) -> DigitsSplits:
  """Returns the digits TFRecords, converting them on first use.

  Args:
    cache_dir: root directory; defaults to `default_cache_dir()`. The data
      goes in a subdirectory keyed by image_size, eval_fraction and seed.
    image_size: side of the stored (upscaled) images.
    eval_fraction: per-class fraction held out for evaluation.
    seed: seed of the split and of the example order.

  Returns:
    DigitsSplits with glob patterns of 4 train shards and 2 eval shards.
  """
  if image_size < 1:
    raise ValueError(f'image_size must be positive, got {image_size}')
  cache_dir = os.path.abspath(os.path.expanduser(
      cache_dir or default_cache_dir()))
  final = os.path.join(cache_dir, _subdir_name(image_size, eval_fraction,
                                               seed))
  manifest = _load_manifest(final)
  if manifest is not None:
    return _splits(final, manifest)

  with tfrecord_writer.staging_directory(final) as temp:
    _build(temp, image_size, eval_fraction, seed)
    for _ in range(3):
      try:
        os.rename(temp, final)
        break
      except OSError:
        # `final` exists: a concurrent run finished first, or a stale
        # incomplete directory (never produced by this code) is in the way.
        manifest = _load_manifest(final)
        if manifest is not None:
          return _splits(final, manifest)
        stale = os.path.join(cache_dir,
                             f'.{os.path.basename(final)}.stale-'
                             f'{uuid.uuid4().hex}')
        try:
          os.rename(final, stale)
          shutil.rmtree(stale, ignore_errors=True)
        except OSError:
          pass
    else:
      raise OSError(f'could not move the digits dataset into {final}')
  manifest = _load_manifest(final)
  if manifest is None:
    raise OSError(f'digits dataset in {final} is incomplete after building')
  return _splits(final, manifest)
