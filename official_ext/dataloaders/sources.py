"""Input sources: file listing, TFRecord record counts, and the TFRecord and
TFDS sources that turn files into (locator, record) elements.
"""
import abc
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
# Sources. A source reads its records, plain (the hot path of 'fail' mode) or
# as (locator, record) elements, where `locator` says where the record is
# ('skip' mode, and the re-scan that names a bad record after a failure).
# ----------------------------------------------------------------------------


class Source(abc.ABC):
  """Where training and evaluation records come from.

  Records are plain (one tensor or a dict), or with `locators` (locator,
  record) elements; `extract` parses a record into (image bytes, raw label);
  `where` (in the graph) and `name` (in Python) name a locator in a message
  ("file F record N"). `no_locator` stands for "no record" (the end-of-pass
  sentinel of 'skip' mode).
  """
  no_locator = None

  @abc.abstractmethod
  def describe(self) -> str:
    """A few words for logs, e.g. '8 TFRecord files'."""

  @abc.abstractmethod
  def train_records(self, params, input_context, num_pipelines, pipeline_id,
                    locators=False) -> tf.data.Dataset:
    """This pipeline's shuffled records, one pass."""

  @abc.abstractmethod
  def eval_records(self, num_pipelines, pipeline_id, by_file,
                   locators=False) -> tf.data.Dataset:
    """This pipeline's share of the eval records, once, in a fixed order."""

  @abc.abstractmethod
  def file_names(self) -> List[str]:
    """The files the records are read from, in order."""

  @abc.abstractmethod
  def record_counts(self) -> List[int]:
    """Records per file, in `file_names` order."""

  @abc.abstractmethod
  def num_records(self) -> int:
    """All records of the source."""

  @abc.abstractmethod
  def extract(self, record):
    """(image bytes, raw label) of a record (may raise)."""

  @abc.abstractmethod
  def sentinel(self):
    """A (locator, record) element standing for the end of a pass."""

  @abc.abstractmethod
  def where(self, locator) -> tf.Tensor:
    """A string tensor naming `locator` for messages."""

  @abc.abstractmethod
  def name(self, locator) -> str:
    """`where` in Python, for a locator value read back (numpy)."""

  def find_read_error(self) -> Optional[str]:
    """Where reading the files fails ('file F after record N: ...'), found by
    reading them again, or None (not known)."""
    return None


class TFRecordSource(Source):
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

  def _reader(self, locators):
    names = self._file_names()

    def read_file(file_id):
      records = tf.data.TFRecordDataset(tf.gather(names, file_id))
      if not locators:
        return records
      # (file id * _FILE_STRIDE + record index, record).
      return records.enumerate(
          start=tf.cast(file_id, tf.int64) * _FILE_STRIDE)

    return read_file

  def _read_in_order(self, locators) -> tf.data.Dataset:
    ids = tf.data.Dataset.range(len(self.files)).map(
        lambda i: tf.cast(i, tf.int32))
    return ids.flat_map(self._reader(locators))

  def train_records(self, params, input_context, num_pipelines, pipeline_id,
                    locators=False):
    del input_context
    num_files = len(self.files)
    if num_files < num_pipelines:
      # Fewer files than pipelines: read all files in a fixed order (identical
      # in every pipeline) and shard records.
      logging.info('%d files < %d input pipelines: sharding records.',
                   num_files, num_pipelines)
      return self._read_in_order(locators).shard(num_pipelines, pipeline_id)
    # Shard files, then shuffle this pipeline's files and interleave them.
    ids = tf.data.Dataset.range(num_files).map(lambda i: tf.cast(i, tf.int32))
    if num_pipelines > 1:
      ids = ids.shard(num_pipelines, pipeline_id)
    mine = len(range(pipeline_id, num_files, num_pipelines))
    ids = ids.shuffle(mine, seed=params.seed, reshuffle_each_iteration=True)
    return ids.interleave(
        self._reader(locators),
        cycle_length=params.cycle_length or tf.data.AUTOTUNE,
        block_length=params.block_length,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=bool(params.deterministic))

  def eval_records(self, num_pipelines, pipeline_id, by_file,
                   locators=False):
    """This pipeline's eval records, in a fixed order: its own files
    (`pipeline_files`) if `by_file`, else every file's records sharded."""
    if by_file:
      ids = tf.data.Dataset.from_tensor_slices(tf.constant(
          pipeline_files(len(self.files), num_pipelines, pipeline_id),
          tf.int32))
      return ids.flat_map(self._reader(locators))
    dataset = self._read_in_order(locators)  # Sequential: deterministic order.
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

  # Stands for "no record" (the end-of-pass sentinel).
  no_locator = -1

  def sentinel(self):
    return (tf.constant(self.no_locator, tf.int64), tf.constant(''))

  def where(self, locator) -> tf.Tensor:
    def known():
      file_id = tf.cast(locator // _FILE_STRIDE, tf.int32)
      return tf.strings.join([
          'file ', tf.gather(self._file_names(), file_id), ' record ',
          tf.strings.as_string(locator % _FILE_STRIDE)])
    return tf.cond(locator < 0, lambda: tf.constant('the end of the input'),
                   known)

  def find_read_error(self) -> Optional[str]:
    for f in self.files:
      try:
        tf.data.TFRecordDataset(f).reduce(0, lambda n, _: n + 1)
        continue
      except tf.errors.OpError:
        pass
      read = 0  # The file fails: find its first record that cannot be read.
      try:
        for _ in tf.data.TFRecordDataset(f):
          read += 1
      except tf.errors.OpError as e:
        what = (e.message or '').strip().splitlines()[0]
        what = what.split('}} ', 1)[-1].split(' [Op:')[0]
        return f'file {f} record {read}: {type(e).__name__}: {what[:200]}'
    return None

  def name(self, locator) -> str:
    locator = int(locator)
    return (f'file {self.files[locator // _FILE_STRIDE]} record '
            f'{locator % _FILE_STRIDE}')


def _make_source(params) -> Source:
  if params.tfds_name:
    from official_ext.dataloaders import tfds_source  # pylint: disable=g-import-not-at-top
    return tfds_source.TFDSSource(params)
  return TFRecordSource(params)
