"""The TFDS source: a prepared TensorFlow Datasets dataset read through its
own file instructions (each eval pipeline opens only its own files).

Its own module so that TFRecord-only runs never import tensorflow_datasets
(slow to import); `sources.make_source` imports it on demand.
"""
import os
from typing import List

from absl import logging
import tensorflow as tf

from official.vision.configs import image_classification as mg_ic

from official_ext.dataloaders.sources import Source


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


class TFDSSource(Source):
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
    """{'image': bytes, 'label': int64} records; with read_config.add_tfds_id
    (tfds_id, record) elements."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    dataset = self.builder.as_dataset(
        split=self._split, shuffle_files=shuffle_files,
        decoders={self._image_key: tfds.decode.SkipDecoding()},
        read_config=read_config)
    image_key, label_key = self._image_key, self._label_key
    with_id = read_config.add_tfds_id

    def record(ex):
      record = {'image': ex[image_key],
                'label': tf.cast(ex[label_key], tf.int64)}
      return (ex['tfds_id'], record) if with_id else record

    return dataset.map(record, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)

  def _num_files(self) -> int:
    return len(self.builder.info.splits[self._split].file_instructions)

  def _sequential(self, locators):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return self._as_dataset(False, tfds.ReadConfig(
        add_tfds_id=locators, try_autocache=False, interleave_cycle_length=1))

  def train_records(self, params, input_context, num_pipelines, pipeline_id,
                    locators=False):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if self._num_files() < num_pipelines:
      logging.info('%d TFDS files < %d input pipelines: sharding records.',
                   self._num_files(), num_pipelines)
      return self._sequential(locators).shard(num_pipelines, pipeline_id)
    read_config = tfds.ReadConfig(
        input_context=input_context if num_pipelines > 1 else None,
        shuffle_seed=params.seed,
        interleave_cycle_length=params.cycle_length or 16,
        interleave_block_length=params.block_length,
        add_tfds_id=locators, try_autocache=False)
    return self._as_dataset(True, read_config)

  def eval_records(self, num_pipelines, pipeline_id, by_file,
                   locators=False):
    """This pipeline's eval records, in a fixed order: its own file
    instructions (`pipeline_files`, TFDS's per-file sharding) if `by_file`,
    else every file's records sharded."""
    if by_file:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      return self._as_dataset(False, tfds.ReadConfig(
          input_context=tf.distribute.InputContext(
              num_input_pipelines=num_pipelines,
              input_pipeline_id=pipeline_id),
          add_tfds_id=locators, try_autocache=False,
          interleave_cycle_length=1))
    dataset = self._sequential(locators)
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
    return record['image'], record['label']

  no_locator = ''

  def sentinel(self):
    return (tf.constant(self.no_locator),
            {'image': tf.constant(''), 'label': tf.constant(0, tf.int64)})

  def where(self, locator) -> tf.Tensor:
    return tf.cond(
        tf.equal(locator, self.no_locator),
        lambda: tf.constant('the end of the input'),
        lambda: tf.strings.join([f'TFDS {self._params.tfds_name} record ',
                                 locator, f' (data_dir {self._data_dir})']))

  def name(self, locator) -> str:
    if isinstance(locator, bytes):
      locator = locator.decode()
    return (f'TFDS {self._params.tfds_name} record {locator} (data_dir '
            f'{self._data_dir})')
