"""Writes images and labels as sharded TFRecords of tf.train.Examples.

The records use Model Garden's image-classification layout, readable by
`official.vision.dataloaders.classification_input.Decoder` and by
`official_ext.dataloaders.classification_input.build_dataset`:

  image/encoded      bytes   PNG or JPEG
  image/format       bytes   b'png' or b'jpeg'
  image/class/label  int64
  image/height       int64
  image/width        int64

Shards are named `<prefix>-00000-of-0000N<suffix>` (suffix `.tfrecord` by
default; ImageNet's Model Garden shards, e.g. `train-00000-of-01024`, have
none) and hold contiguous
blocks of the input, so reading the shards in name order recovers the input
order. Every shard is first written under a temporary name in its target
directory and all are renamed only after every shard was written, so an
exception or crash while encoding never leaves files under the final names.
Whole dataset directories are built the same way in `staging_directory`.
"""
import contextlib
import glob
import os
import re
import shutil
import tempfile
import uuid
from typing import Iterable, Iterator, List, Sequence

import numpy as np
import tensorflow as tf

_FORMATS = ('png', 'jpeg')


DEFAULT_SUFFIX = '.tfrecord'


@contextlib.contextmanager
def staging_directory(final: str) -> Iterator[str]:
  """A temporary sibling of directory `final` to build a dataset in.

  The caller renames it to `final` once complete; whatever is left of it on
  exit (an exception, a lost race) is removed, so `final` never holds a
  half-written dataset.
  """
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  temp = tempfile.mkdtemp(prefix=f'.{os.path.basename(final)}.tmp-',
                          dir=parent)
  try:
    os.chmod(temp, 0o755)  # mkdtemp makes it private; datasets are shared.
    yield temp
  finally:
    if os.path.isdir(temp):
      shutil.rmtree(temp, ignore_errors=True)


def shard_path(path_prefix: str, index: int, num_shards: int,
               suffix: str = DEFAULT_SUFFIX) -> str:
  """The file name of shard `index` of `num_shards` for `path_prefix`."""
  return f'{path_prefix}-{index:05d}-of-{num_shards:05d}{suffix}'


def _existing_shards(path_prefix: str,
                     suffix: str = DEFAULT_SUFFIX) -> List[str]:
  """Files already present that follow the shard naming for `path_prefix`."""
  pattern = glob.escape(path_prefix) + '-*-of-*' + glob.escape(suffix)
  name_re = re.compile(re.escape(os.path.basename(path_prefix)) +
                       r'-\d{5}-of-\d{5}' + re.escape(suffix) + '$')
  return sorted(p for p in glob.glob(pattern)
                if name_re.match(os.path.basename(p)))


def _as_rgb_uint8(image, index: int) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(
        f'image {index} has dtype {image.dtype}; expected uint8')
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(
        f'image {index} has shape {image.shape}; expected HxW, HxWx1 or HxWx3')
  if image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f'image {index} is empty: shape {image.shape}')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image)


def _int64_feature(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _bytes_feature(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def encode_example(image: np.ndarray, label: int, image_format: str = 'png',
                   jpeg_quality: int = 95) -> bytes:
  """Serializes one uint8 HxWx3 image and its label as a tf.train.Example."""
  if image_format == 'png':
    encoded = tf.io.encode_png(image).numpy()
  elif image_format == 'jpeg':
    encoded = tf.io.encode_jpeg(image, quality=jpeg_quality).numpy()
  else:
    raise ValueError(
        f'image_format must be one of {_FORMATS}, got {image_format!r}')
  example = tf.train.Example(features=tf.train.Features(feature={
      'image/encoded': _bytes_feature(encoded),
      'image/format': _bytes_feature(image_format.encode('ascii')),
      'image/class/label': _int64_feature(label),
      'image/height': _int64_feature(image.shape[0]),
      'image/width': _int64_feature(image.shape[1]),
  }))
  return example.SerializeToString()


def write_image_classification_records(
    path_prefix: str,
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Iterable[int],
    num_shards: int = 1,
    image_format: str = 'png',
    jpeg_quality: int = 95,
    overwrite: bool = False,
    suffix: str = DEFAULT_SUFFIX) -> List[str]:
  """Writes `images` and `labels` as `num_shards` TFRecord files.

  Args:
    path_prefix: files are `<path_prefix>-0000i-of-0000N<suffix>`; the
      directory is created if missing.
    images: a uint8 array [N, H, W(, C)] or a sequence of uint8 arrays
      HxW, HxWx1 or HxWx3 (sizes may differ); grey images become 3 channels.
    labels: N integer labels.
    num_shards: number of files; shard i holds a contiguous block of the input.
      Must not exceed N (no empty shards).
    image_format: 'png' (lossless) or 'jpeg'.
    jpeg_quality: JPEG quality, 0..100.
    overwrite: if False, raise ValueError when any file with this prefix and
      the shard naming already exists; if True, replace them (stale shards of
      another shard count with the same prefix are removed too, so a glob over
      the prefix never mixes two datasets).
    suffix: file name suffix after the shard numbers ('.tfrecord' by default,
      '' for ImageNet-style names such as `train-00000-of-01024`).

  Returns:
    The paths of the written files, in shard order.
  """
  if image_format not in _FORMATS:
    raise ValueError(
        f'image_format must be one of {_FORMATS}, got {image_format!r}')
  if not 0 <= int(jpeg_quality) <= 100:
    raise ValueError(f'jpeg_quality must be in [0, 100], got {jpeg_quality}')
  labels = [int(l) for l in labels]
  num_images = len(images)
  if num_images != len(labels):
    raise ValueError(
        f'got {num_images} images but {len(labels)} labels')
  if num_images == 0:
    raise ValueError('no images to write')
  if not 1 <= num_shards <= num_images:
    raise ValueError(
        f'num_shards must be in [1, {num_images}] (number of images), got '
        f'{num_shards}')

  path_prefix = os.path.abspath(os.path.expanduser(path_prefix))
  directory = os.path.dirname(path_prefix)
  os.makedirs(directory, exist_ok=True)
  if '/' in suffix or os.sep in suffix:
    raise ValueError(f'suffix must not contain a path separator: {suffix!r}')
  final_paths = [shard_path(path_prefix, i, num_shards, suffix)
                 for i in range(num_shards)]

  def check_existing():
    existing = _existing_shards(path_prefix, suffix)
    if existing and not overwrite:
      raise ValueError(
          f'refusing to overwrite existing records {existing} (prefix '
          f'{path_prefix!r}); pass overwrite=True to replace them')
    return existing

  check_existing()
  token = uuid.uuid4().hex
  temp_paths = [
      os.path.join(directory, f'.{os.path.basename(p)}.tmp-{token}')
      for p in final_paths]
  bounds = np.linspace(0, num_images, num_shards + 1).round().astype(int)
  try:
    for shard, temp_path in enumerate(temp_paths):
      with tf.io.TFRecordWriter(temp_path) as writer:
        for i in range(bounds[shard], bounds[shard + 1]):
          image = _as_rgb_uint8(images[i], i)
          writer.write(encode_example(image, labels[i], image_format,
                                      jpeg_quality))
    # Re-check just before publishing: another writer may have finished.
    existing = check_existing()
    for stale in set(existing) - set(final_paths):
      os.remove(stale)
    for temp_path, final_path in zip(temp_paths, final_paths):
      os.replace(temp_path, final_path)
  finally:
    for temp_path in temp_paths:
      if os.path.exists(temp_path):
        os.remove(temp_path)
  return final_paths
