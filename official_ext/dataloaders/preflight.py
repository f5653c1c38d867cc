"""Pre-flight check of a source (`check_source`) in plain Python: files exist,
sampled labels are in range, sampled images decode. Does not start the
TensorFlow runtime.
"""
import math
import os
import struct
from typing import Optional

import tensorflow as tf

from official.vision.configs import image_classification as mg_ic

from official_ext.dataloaders.preprocessing import _check_params
from official_ext.dataloaders.sources import TFRecordSource
from official_ext.dataloaders.tfds_source import TFDSSource
from official_ext.dataloaders.bad_records import (
    _label_offset_hint, resolved_label_offset)

# Records whose labels the pre-flight check reads per split (spread over at
# most _LABEL_CHECK_FILES files).
LABEL_CHECK_RECORDS = 1024
_LABEL_CHECK_FILES = 16
# Sampled records whose images the pre-flight check decodes (with PIL).
DECODE_CHECK_RECORDS = 16


# ----------------------------------------------------------------------------
# Pre-flight check.
# ----------------------------------------------------------------------------


def _label_and_image(serialized: bytes, label_key: str, image_key: str):
  """(single int64 label or None, image bytes or None) of an Example."""
  try:
    example = tf.train.Example.FromString(serialized)
  except Exception:  # pylint: disable=broad-except
    return None, None
  feature = example.features.feature
  label = feature.get(label_key)
  if label is None or len(label.int64_list.value) != 1:
    label = None
  else:
    label = int(label.int64_list.value[0])
  image = feature.get(image_key)
  image = (image.bytes_list.value[0]
           if image is not None and len(image.bytes_list.value) == 1 else None)
  return label, image


def _decodable(image: Optional[bytes]) -> bool:
  """Whether PIL can decode the image bytes (no TensorFlow runtime)."""
  if not image:
    return False
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(image)) as decoded:
      decoded.load()
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def iter_tfrecord_file(path: str, skip: int = 0, take: int = -1):
  """Yields (index, serialized record) of a TFRecord file in plain Python.

  Reads with tf.io.gfile and struct only, so the pre-flight check does not
  start the TensorFlow runtime (logical CPU devices are configured after
  it). CRCs are not verified; a truncated file raises ValueError.
  """
  with tf.io.gfile.GFile(path, 'rb') as f:
    index = 0
    while take < 0 or index < skip + take:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f'TFRecord file {path} is truncated at record '
                         f'{index}')
      (length,) = struct.unpack('<Q', header[:8])
      data = f.read(length + 4)
      if len(data) < length + 4:
        raise ValueError(f'TFRecord file {path} is truncated at record '
                         f'{index}')
      if index >= skip:
        yield index, data[:length]
      index += 1


def _sample_tfrecord_labels(files, label_key, image_key, max_records):
  """Yields (where, label, image) for up to max_records records."""
  step = max(1, math.ceil(len(files) / _LABEL_CHECK_FILES))
  chosen = files[::step][:_LABEL_CHECK_FILES]
  per_file = max(1, max_records // len(chosen)) if max_records > 0 else -1
  for path in chosen:
    for index, record in iter_tfrecord_file(path, take=per_file):
      yield (f'file {path} record {index}',
             *_label_and_image(record, label_key, image_key))


def _sample_tfds_labels(source: 'TFDSSource', max_records):
  """(where, label, image) of the first records of the split's files."""
  info = source.builder.info
  if str(getattr(info, 'file_format', 'tfrecord')).split('.')[-1].lower() != (
      'tfrecord'):
    return  # Only the ClassLabel size is checked for other file formats.
  instructions = info.splits[source._split].file_instructions  # pylint: disable=protected-access
  instructions = instructions[:_LABEL_CHECK_FILES]
  per_file = (max(1, max_records // len(instructions)) if max_records > 0
              else -1)
  name = source._params.tfds_name  # pylint: disable=protected-access
  for instruction in instructions:
    path = os.fspath(instruction.filename)
    if not os.path.isabs(path) and not path.startswith(('gs://', 's3://')):
      path = os.path.join(os.fspath(source.builder.data_dir), path)
    take = instruction.take
    if per_file > 0:
      take = per_file if take is None or take < 0 else min(take, per_file)
    for index, record in iter_tfrecord_file(path, skip=instruction.skip or 0,
                                            take=-1 if take is None else take):
      yield (f'TFDS {name} record {os.path.basename(path)}__{index}',
             *_label_and_image(record, source._label_key,  # pylint: disable=protected-access
                               source._image_key))  # pylint: disable=protected-access


def check_source(params: mg_ic.DataConfig, num_classes: Optional[int] = None,
                 max_records: int = LABEL_CHECK_RECORDS) -> str:
  """Pre-flight check of one split's source; raises a one-line ValueError.

  Checks that the input files exist (or that the TFDS dataset is known and
  prepared in its data dir, with the split and features), and that the labels
  of up to `max_records` records (spread over up to 16 files; -1: all),
  minus label_offset, lie in [0, num_classes); decodes the images of the
  first DECODE_CHECK_RECORDS sampled records (any failure is an error with
  on_bad_record='fail'; with 'skip', only all of them failing is). Records
  without a readable label are left to the pipeline's on_bad_record
  handling. Returns a short description of the source.
  """
  _check_params(params, image_size=None)
  label_offset = resolved_label_offset(params)
  if params.tfds_name:
    source = TFDSSource(params)
    if num_classes:
      feature = source.builder.info.features[params.tfds_label_key]
      stored = getattr(feature, 'num_classes', None)
      if stored is not None and stored - label_offset > num_classes:
        raise ValueError(
            f'TFDS dataset {params.tfds_name!r} has {stored} classes '
            f'(labels 0..{stored - 1}), label_offset {label_offset}, '
            f'but the model has num_classes={num_classes}')
    samples = _sample_tfds_labels(source, max_records)
  else:
    source = TFRecordSource(params)
    samples = _sample_tfrecord_labels(source.files, params.label_field_key,
                                      params.image_field_key, max_records)
  decoded, undecodable = 0, []
  labels, first_outside = [], None
  for where, label, image in samples:
    if decoded + len(undecodable) < DECODE_CHECK_RECORDS:
      if _decodable(image):
        decoded += 1
      else:
        undecodable.append(where)
        if params.on_bad_record == 'fail':
          raise ValueError(
              f'the image of {where} is missing or cannot be decoded '
              "(on_bad_record is 'fail')")
    if label is None:
      continue
    labels.append(label)
    shifted = label - label_offset
    if first_outside is None and (
        shifted < 0 or (num_classes and shifted >= num_classes)):
      first_outside = where, label
  if first_outside:
    where, label = first_outside
    raise ValueError(
        f'label {label} of {where} minus label_offset {label_offset} is '
        f'outside [0, {num_classes or "inf"})'
        + _label_offset_hint(labels, label_offset, num_classes))
  if undecodable and not decoded:
    raise ValueError(
        f'none of the {len(undecodable)} sampled records has a decodable '
        f'image (the first: {undecodable[0]}); check the data and '
        'image_field_key / tfds_image_key')
  return source.describe()
