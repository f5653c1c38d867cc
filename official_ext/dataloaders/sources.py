"""Input sources: file listing, TFRecord record counts, and the TFRecord and
TFDS sources that turn files into (locator, record) elements.
"""
import os
from typing import List, Optional, Sequence

from absl import logging
import tensorflow as tf

from official.modeling import hyperparams
from official.vision.configs import image_classification as mg_ic


# TFRecord locator = file id * _FILE_STRIDE + record index within the file.
_FILE_STRIDE = 2 ** 40

# Label value standing for "no label in the record" (parse default).
_MISSING_LABEL = -(2 ** 62)

# Record counts of TFRecord files by (path, size, mtime): every file is
# counted once per process, however many eval datasets are built.
_RECORD_COUNT_CACHE = {}


# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------


def _split_patterns(input_path) -> List[str]:
  if isinstance(input_path, hyperparams.Config):
    raise ValueError(
        'input_path given as a Config (weighted dataset mixing) is not '
        f'supported by this pipeline: {input_path}')
  if isinstance(input_path, str):
    items = [input_path]
  elif isinstance(input_path, (list, tuple)):
    items = list(input_path)
  else:
    raise ValueError(
        f'input_path must be a str or a list of str, got {input_path!r}')
  patterns = []
  for item in items:
    if not isinstance(item, str):
      raise ValueError(f'input_path entries must be str, got {item!r}')
    patterns.extend(p.strip() for p in item.split(',') if p.strip())
  if not patterns:
    raise ValueError(f'input_path is empty: {input_path!r}')
  return patterns


def list_files(input_path) -> List[str]:
  """Expands a glob, comma-separated globs or a list of globs into files.

  Each pattern's matches are sorted; patterns keep their order; duplicates are
  dropped. Raises ValueError naming any pattern that matches no file.
  """
  files = []
  seen = set()
  for pattern in _split_patterns(input_path):
    try:
      matches = tf.io.gfile.glob(pattern)
    except tf.errors.NotFoundError:
      matches = []
    matches = sorted(m for m in matches if not tf.io.gfile.isdir(m))
    if not matches:
      raise ValueError(f'input_path pattern {pattern!r} matches no files')
    for m in matches:
      if m not in seen:
        seen.add(m)
        files.append(m)
  return files


def file_record_counts(files: Sequence[str]) -> List[int]:
  """Records in each of `files` (each file read once, then cached by
  path/size/mtime for the process). Raises ValueError naming an unreadable
  file."""
  counts = []
  for f in files:
    stat = tf.io.gfile.stat(f)
    key = (f, stat.length, stat.mtime_nsec)
    if key not in _RECORD_COUNT_CACHE:
      with tf.init_scope():  # Count eagerly even inside a tf.function.
        try:
          count = tf.data.TFRecordDataset(f).reduce(
              tf.constant(0, tf.int64), lambda n, _: n + 1)
        except tf.errors.OpError as e:
          raise ValueError(
              f'cannot read TFRecord file {f}: {type(e).__name__}: '
              f'{(e.message or "").splitlines()[-1]}') from None
      _RECORD_COUNT_CACHE[key] = int(count.numpy())
    counts.append(_RECORD_COUNT_CACHE[key])
  return counts


def count_records(files: Sequence[str]) -> int:
  """Number of records in `files` (see `file_record_counts`)."""
  return sum(file_record_counts(files))


def pipeline_files(num_files: int, num_pipelines: int,
                   pipeline_id: int) -> List[int]:
  """Indices of the files input pipeline `pipeline_id` of `num_pipelines`
  reads when files are sharded: i, i+P, i+2P, ... (TFDS's rule too)."""
  return list(range(pipeline_id, num_files, num_pipelines))


# ----------------------------------------------------------------------------
# Sources. A source turns its records into elements
#   (locator, record) where `locator` says where the record is, and decodes
# them into (uint8 image, label, status).
# ----------------------------------------------------------------------------


class _TFRecordSource:
  """Model Garden TFRecord shards.

  locator = file id * _FILE_STRIDE + record index within the file.
  """

  def __init__(self, params: mg_ic.DataConfig):
    self.files = list_files(params.input_path)
    self._image_key = params.image_field_key
    self._label_key = params.label_field_key

  def describe(self) -> str:
    return f'{len(self.files)} TFRecord files'

  def _file_names(self):
    return tf.constant(self.files)

  def _read_file(self, file_id):
    names = self._file_names()
    # Function-free: (file id * _FILE_STRIDE + record index, record).
    first = tf.cast(file_id, tf.int64) * _FILE_STRIDE
    return tf.data.TFRecordDataset(tf.gather(names, file_id)).enumerate(
        start=first)

  def _read_in_order(self) -> tf.data.Dataset:
    ids = tf.data.Dataset.range(len(self.files)).map(
        lambda i: tf.cast(i, tf.int32))
    return ids.flat_map(self._read_file)

  def train_records(self, params, input_context, num_pipelines, pipeline_id):
    del input_context
    num_files = len(self.files)
    if num_files < num_pipelines:
      # Fewer files than pipelines: read all files in a fixed order (identical
      # in every pipeline) and shard records.
      logging.info('%d files < %d input pipelines: sharding records.',
                   num_files, num_pipelines)
      return self._read_in_order().shard(num_pipelines, pipeline_id)
    # Shard files, then shuffle this pipeline's files and interleave them.
    ids = tf.data.Dataset.range(num_files).map(lambda i: tf.cast(i, tf.int32))
    if num_pipelines > 1:
      ids = ids.shard(num_pipelines, pipeline_id)
    mine = len(range(pipeline_id, num_files, num_pipelines))
    ids = ids.shuffle(mine, seed=params.seed, reshuffle_each_iteration=True)
    return ids.interleave(
        self._read_file,
        cycle_length=params.cycle_length or tf.data.AUTOTUNE,
        block_length=params.block_length,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=bool(params.deterministic))

  def eval_records(self, num_pipelines, pipeline_id, by_file):
    """This pipeline's eval records, in a fixed order: its own files
    (`pipeline_files`) if `by_file`, else every file's records sharded."""
    if by_file:
      ids = tf.data.Dataset.from_tensor_slices(tf.constant(
          pipeline_files(len(self.files), num_pipelines, pipeline_id),
          tf.int32))
      return ids.flat_map(self._read_file)
    dataset = self._read_in_order()  # Sequential: deterministic order.
    if num_pipelines > 1:
      dataset = dataset.shard(num_pipelines, pipeline_id)
    return dataset

  def file_names(self) -> List[str]:
    return list(self.files)

  def record_counts(self) -> List[int]:
    return file_record_counts(self.files)

  def num_records(self) -> int:
    return count_records(self.files)

  def extract(self, record):
    """(image bytes, raw label) of a serialized example (may raise)."""
    features = tf.io.parse_single_example(record, {
        self._image_key: tf.io.FixedLenFeature((), tf.string,
                                               default_value=''),
        self._label_key: tf.io.FixedLenFeature((), tf.int64,
                                               default_value=_MISSING_LABEL),
    })
    return features[self._image_key], features[self._label_key]

  # Stands for "no record" (window padding, end-of-stream sentinel).
  no_locator = -1
  locator_dtype = tf.int64

  def sentinel(self):
    return (tf.constant(self.no_locator, tf.int64), tf.constant(''))

  @staticmethod
  def split(element):
    """(locator, record) of a raw element."""
    return element

  def reread_image(self, locator) -> Optional[tf.data.Dataset]:
    """The image bytes of the record at `locator`, read again (1 element)."""
    file_id = tf.cast(locator // _FILE_STRIDE, tf.int32)
    return tf.data.TFRecordDataset(tf.gather(self._file_names(), file_id)).skip(
        locator % _FILE_STRIDE).take(1).map(lambda r: self.extract(r)[0])

  def where(self, locator) -> tf.Tensor:
    def known():
      file_id = tf.cast(locator // _FILE_STRIDE, tf.int32)
      return tf.strings.join([
          'file ', tf.gather(self._file_names(), file_id), ' record ',
          tf.strings.as_string(locator % _FILE_STRIDE)])
    return tf.cond(locator < 0, lambda: tf.constant('the end of the input'),
                   known)


def _tfds_data_dir(params) -> str:
  if params.tfds_data_dir:
    return params.tfds_data_dir
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return str(tfds.core.constants.DATA_DIR)


def tfds_builder(params: mg_ic.DataConfig):
  """The TFDS builder of `params.tfds_name`, prepared in its data dir.

  Raises ValueError (one line, naming the dataset and the data dir) if the
  data dir does not exist, the dataset is unknown or not prepared there, the
  split does not exist, or the image/label features are missing. Never
  downloads.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = params.tfds_name
  data_dir = _tfds_data_dir(params)
  if not tf.io.gfile.isdir(data_dir):
    raise ValueError(
        f'tfds_data_dir {data_dir!r} (for TFDS dataset {name!r}) does not '
        'exist; nothing is downloaded, point tfds_data_dir at a directory '
        'holding the prepared dataset')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    kind = ('unknown TFDS dataset'
            if isinstance(e, tfds.core.registered.DatasetNotFoundError) else
            f'cannot load TFDS dataset ({type(e).__name__})')
    raise ValueError(
        f'{kind} {name!r}: neither registered in tensorflow_datasets nor '
        f'prepared in tfds_data_dir {data_dir!r}') from None
  if not builder.is_prepared():
    raise ValueError(
        f'TFDS dataset {name!r} is not prepared in tfds_data_dir '
        f'{data_dir!r} (nothing is downloaded here: prepare it elsewhere, '
        f'e.g. `tfds build {name} --data_dir=...`, and copy it there)')
  try:
    builder.info.splits[params.tfds_split].num_examples  # pylint: disable=expression-not-assigned
  except (KeyError, ValueError) as e:
    raise ValueError(
        f'TFDS dataset {name!r} in {data_dir!r} has no split '
        f'{params.tfds_split!r} ({e.__class__.__name__}); its splits: '
        f'{sorted(builder.info.splits)}') from None
  features = builder.info.features
  for key in (params.tfds_image_key, params.tfds_label_key):
    if key not in features:
      raise ValueError(
          f'TFDS dataset {name!r} has no feature {key!r} (its features: '
          f'{sorted(features.keys())}); set tfds_image_key/tfds_label_key')
  return builder


class _TFDSSource:
  """A prepared TFDS dataset; locator = tfds_id (names file and index)."""

  def __init__(self, params: mg_ic.DataConfig):
    self.builder = tfds_builder(params)
    self._params = params
    self._split = params.tfds_split
    self._image_key = params.tfds_image_key
    self._label_key = params.tfds_label_key
    self._data_dir = _tfds_data_dir(params)

  def describe(self) -> str:
    return f'TFDS {self._params.tfds_name}:{self._split}'

  def _as_dataset(self, shuffle_files, read_config):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    dataset = self.builder.as_dataset(
        split=self._split, shuffle_files=shuffle_files,
        decoders={self._image_key: tfds.decode.SkipDecoding()},
        read_config=read_config)
    image_key, label_key = self._image_key, self._label_key
    return dataset.map(
        lambda ex: (ex['tfds_id'], (ex[image_key],
                                    tf.cast(ex[label_key], tf.int64))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _num_files(self) -> int:
    return len(self.builder.info.splits[self._split].file_instructions)

  def _sequential(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return self._as_dataset(False, tfds.ReadConfig(
        add_tfds_id=True, try_autocache=False, interleave_cycle_length=1))

  def train_records(self, params, input_context, num_pipelines, pipeline_id):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if self._num_files() < num_pipelines:
      logging.info('%d TFDS files < %d input pipelines: sharding records.',
                   self._num_files(), num_pipelines)
      return self._sequential().shard(num_pipelines, pipeline_id)
    read_config = tfds.ReadConfig(
        input_context=input_context if num_pipelines > 1 else None,
        shuffle_seed=params.seed,
        interleave_cycle_length=params.cycle_length or 16,
        interleave_block_length=params.block_length,
        add_tfds_id=True, try_autocache=False)
    return self._as_dataset(True, read_config)

  def eval_records(self, num_pipelines, pipeline_id, by_file):
    """This pipeline's eval records, in a fixed order: its own file
    instructions (`pipeline_files`, TFDS's per-file sharding) if `by_file`,
    else every file's records sharded."""
    if by_file:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      return self._as_dataset(False, tfds.ReadConfig(
          input_context=tf.distribute.InputContext(
              num_input_pipelines=num_pipelines,
              input_pipeline_id=pipeline_id),
          add_tfds_id=True, try_autocache=False, interleave_cycle_length=1))
    dataset = self._sequential()
    if num_pipelines > 1:
      dataset = dataset.shard(num_pipelines, pipeline_id)
    return dataset

  def _file_instructions(self):
    return self.builder.info.splits[self._split].file_instructions

  def file_names(self) -> List[str]:
    return [os.fspath(fi.filename) for fi in self._file_instructions()]

  def record_counts(self) -> List[int]:
    """Examples per file instruction, from the split's metadata (no read)."""
    return [int(fi.take) for fi in self._file_instructions()]

  def num_records(self) -> int:
    return self.builder.info.splits[self._split].num_examples

  def extract(self, record):
    return record

  no_locator = ''
  locator_dtype = tf.string

  def reread_image(self, locator) -> Optional[tf.data.Dataset]:
    """The image bytes of the record `locator` (a tfds_id: file__index), read
    again (1 element); None if the files are not TFRecords."""
    info = self.builder.info
    if str(getattr(info, 'file_format', 'tfrecord')).split('.')[-1].lower() != (
        'tfrecord'):
      return None
    parts = tf.strings.split(locator, '__')
    path = tf.strings.join([os.fspath(self.builder.data_dir), '/', parts[0]])
    index = tf.strings.to_number(parts[-1], tf.int64)
    image_key = self._image_key
    return tf.data.TFRecordDataset(path).skip(index).take(1).map(
        lambda r: tf.io.parse_single_example(r, {
            image_key: tf.io.FixedLenFeature((), tf.string, default_value='')
        })[image_key])

  def sentinel(self):
    return (tf.constant(self.no_locator),
            (tf.constant(''), tf.constant(0, tf.int64)))

  @staticmethod
  def split(element):
    return element

  def where(self, locator) -> tf.Tensor:
    return tf.cond(
        tf.equal(locator, self.no_locator),
        lambda: tf.constant('the end of the input'),
        lambda: tf.strings.join([f'TFDS {self._params.tfds_name} record ',
                                 locator, f' (data_dir {self._data_dir})']))


def _make_source(params):
  if params.tfds_name:
    return _TFDSSource(params)
  return _TFRecordSource(params)
