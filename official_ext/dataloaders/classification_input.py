"""Image-classification input pipeline for the EfficientNet recipe.

`build_dataset` is the `dataset_fn` given to
`strategy.distribute_datasets_from_function` (Orbit/Model Garden): each call
builds one input pipeline and batches by the PER-REPLICA batch size.

Sources (chosen by the DataConfig):
  - Model Garden TFRecord shards (`input_path`: glob, comma-separated globs or
    a list), tf.train.Examples with `image/encoded` (JPEG or PNG) and
    `image/class/label` (keys configurable);
  - a TFDS image-classification dataset already prepared in a local
    `tfds_data_dir` (`tfds_name`, `tfds_split`; e.g. `imagenet2012`,
    `imagenette`, or any dataset with image and label features). Nothing is
    ever downloaded. Images are read as their encoded bytes and decoded by the
    same code as TFRecords, so both sources give identical results.
Stored labels minus `label_offset` (1 for 1-based ImageNet labels) must lie in
[0, num_classes).

Training follows the reference EfficientNet preprocessing: Inception-style
random-resized crop (area 0.08-1, aspect 3/4-4/3, decoded with
`decode_and_crop_jpeg`; a padded center crop when sampling fails), random
horizontal flip, bicubic (or bilinear) resize, optional AutoAugment or
RandAugment (Model Garden's `official.vision.ops.augment`, from
`DataConfig.aug_type`), ImageNet mean/std normalization, output in
`DataConfig.dtype` (float32 or bfloat16).

Distribution: training files are sharded across input pipelines
(`tf.distribute.InputContext`; records are sharded when there are fewer files
than pipelines), shuffled with `DataConfig.seed`, interleaved, decoded in
parallel, batched per replica and prefetched; `cache` caches the records.

Evaluation is exact: records are sharded across input pipelines, and every
pipeline's shard is padded with dummy examples (zero image, label -1) up to
`ceil(num_examples / global_batch_size) * global_batch_size / num_pipelines`
examples, so every pipeline yields the same number of full batches and every
real example is seen exactly once. Metrics must mask label -1.

Bad records (`DataConfig.on_bad_record`): every record carries where it came
from (file and record index within the file; for TFDS its `tfds_id`, which
names the file and the index). A record that cannot be parsed, has no label
or no image, whose image cannot be decoded, or whose label is outside
[0, num_classes) after the offset, either
  - 'fail' (default): stops the input pipeline with an InvalidArgumentError
    "bad input record: file F record I: reason ...";
  - 'skip': is dropped, and each drop is printed to stderr with the running
    count of drops of that input pipeline ("skipped bad input record (N so
    far in this input pipeline): file F record I: reason").
Missing fields and out-of-range labels are found by checks in the graph.
Parse/decode errors cannot be caught inside a graph (and no py_function is
used): records get sequence numbers, decoding runs in an order-preserving map
followed by `ignore_errors()`, and a check after it finds the gaps in the
sequence. Evaluation and 'skip' mode check record by record; each record
carries the locators of the records before it, which name the vanished ones.
Training in 'fail' mode (the default) keeps Model Garden's hot path (the
decode map fused with the batch): a batch with an undecodable record vanishes
as a whole, the batch check sees the gap and names the record by reading the
previous batch's records again (their locators travel with the next batch)
and decoding them one by one. Read errors of the files themselves (an
unreadable file, a corrupt TFRecord) always fail the pipeline, in both modes.
Training never reads forever: in 'skip' mode every pass over the data ends
with a sentinel, and a pass that yielded no usable record fails ("no usable
input record ..."); in 'fail' mode a batch of sentinels follows every 4096
records, so even a stream whose every batch vanishes fails, naming a record,
and data with no records at all fails too. Evaluation streams end with a
sentinel so trailing failures are found too. `input_error_message` turns the
TensorFlow error a training loop raises into the pipeline's one-line message.

`check_source` is the pre-flight check run before training (missing files,
unknown or unprepared TFDS datasets, labels out of range and undecodable
images in a sample); it does not start the TensorFlow runtime.
"""
import math
import os
import struct
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from official.modeling import hyperparams
from official.vision.configs import image_classification as mg_ic
from official.vision.ops import augment
from official.vision.ops import preprocess_ops

# ImageNet mean / stddev on the 0..255 scale (Model Garden's MEAN_RGB and
# STDDEV_RGB = 255 * (0.485, 0.456, 0.406) and 255 * (0.229, 0.224, 0.225)).
MEAN_RGB = preprocess_ops.MEAN_RGB
STDDEV_RGB = preprocess_ops.STDDEV_RGB

PADDING_LABEL = -1
ON_BAD_RECORD = ('fail', 'skip')
_DTYPES = {'float32': tf.float32, 'bfloat16': tf.bfloat16,
           'float16': tf.float16}
_RESIZE_METHODS = ('bicubic', 'bilinear')

# TFRecord locator = file id * _FILE_STRIDE + record index within the file.
_FILE_STRIDE = 2 ** 40
# Locators of the last _WINDOW records are kept with every record, to name
# records whose decoding raised (and so vanished); records get them in
# blocks of _BLOCK.
_WINDOW = 4
_BLOCK = 64

# Every error the input pipeline raises while it runs starts with one of
# these (`input_error_message` finds them in a TensorFlow error).
BAD_RECORD = 'bad input record'
READ_FAILED = 'reading the input failed'
NO_USABLE_RECORD = 'no usable input record'
INPUT_ERROR_PREFIXES = (BAD_RECORD + ': ', READ_FAILED, NO_USABLE_RECORD)

# Label value standing for "no label in the record" (parse default).
_MISSING_LABEL = -(2 ** 62)
# Record status codes and their messages.
OK, NO_LABEL, NO_IMAGE, UNDECODABLE, LABEL_OUT_OF_RANGE, SENTINEL = range(6)
_REASONS = (
    'ok',
    'the record has no label',
    'the record has no image (empty or missing image bytes)',
    'the record could not be parsed or its image could not be decoded '
    '(corrupt or unsupported image data)',
    'label outside [0, num_classes) after subtracting label_offset',
    'end of stream',
)

# Records whose labels the pre-flight check reads per split (spread over at
# most _LABEL_CHECK_FILES files).
LABEL_CHECK_RECORDS = 1024
_LABEL_CHECK_FILES = 16
# Sampled records whose images the pre-flight check decodes (with PIL).
DECODE_CHECK_RECORDS = 16

# Real record counts of eval file lists, so repeated eval dataset builds
# (one per evaluation) count each file list once.
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


def count_records(files: Sequence[str]) -> int:
  """Number of records in `files` (read once, then cached by path/mtime)."""
  key = []
  for f in files:
    stat = tf.io.gfile.stat(f)
    key.append((f, stat.length, stat.mtime_nsec))
  key = tuple(key)
  if key not in _RECORD_COUNT_CACHE:
    total = 0
    with tf.init_scope():  # Count eagerly even if called inside a tf.function.
      for f in files:
        try:
          count = tf.data.TFRecordDataset(f).reduce(
              tf.constant(0, tf.int64), lambda n, _: n + 1)
        except tf.errors.OpError as e:
          raise ValueError(
              f'cannot read TFRecord file {f}: {type(e).__name__}: '
              f'{(e.message or "").splitlines()[-1]}') from None
        total += int(count.numpy())
    _RECORD_COUNT_CACHE[key] = total
  return _RECORD_COUNT_CACHE[key]


# ----------------------------------------------------------------------------
# Crop windows. A window is int32 [offset_y, offset_x, height, width].
# ----------------------------------------------------------------------------


def sample_crop_window(image_shape: tf.Tensor,
                       area_range: Tuple[float, float] = (0.08, 1.0),
                       aspect_ratio_range: Tuple[float, float] = (3. / 4.,
                                                                  4. / 3.),
                       min_object_covered: float = 0.1,
                       max_attempts: int = 10,
                       seed: Optional[int] = None) -> tf.Tensor:
  """Inception-style random crop window (`sample_distorted_bounding_box`).

  Area is a fraction of the image area, aspect ratio is width / height. When
  no window is found within `max_attempts` the whole image is returned.
  """
  image_shape = tf.cast(image_shape, tf.int32)
  bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
  kwargs = {} if seed is None else {'seed': seed}
  begin, size, _ = tf.image.sample_distorted_bounding_box(
      image_shape,
      bounding_boxes=bbox,
      min_object_covered=min_object_covered,
      aspect_ratio_range=aspect_ratio_range,
      area_range=area_range,
      max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True,
      **kwargs)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def center_crop_window(image_shape: tf.Tensor, image_size: int,
                       crop_padding: int) -> tf.Tensor:
  """Reference center crop: a square of side image_size / (image_size +
  crop_padding) * min(height, width), centered (padding 0 keeps the whole
  shorter side)."""
  image_shape = tf.cast(image_shape, tf.int32)
  height, width = image_shape[0], image_shape[1]
  fraction = image_size / (image_size + crop_padding)
  side = tf.cast(
      fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  offset_y = (height - side + 1) // 2
  offset_x = (width - side + 1) // 2
  return tf.stack([offset_y, offset_x, side, side])


def train_crop_window(image_shape: tf.Tensor, image_size: int,
                      area_range: Tuple[float, float],
                      aspect_ratio_range: Tuple[float, float],
                      crop_padding: int,
                      seed: Optional[int] = None) -> tf.Tensor:
  """Random-resized-crop window with the reference fallback.

  As in the reference `_decode_and_random_crop`: if the sampled window is the
  whole image (sampling failed), use the padded center crop instead. The
  reference decides by comparing [height, width, channels] of the stored
  image with those of the decoded (3-channel) crop, so for a grayscale or
  CMYK JPEG it never falls back: a failed sample resizes the whole image.
  image_shape is [height, width, channels] as stored (`extract_jpeg_shape`).
  """
  image_shape = tf.cast(image_shape, tf.int32)
  window = sample_crop_window(image_shape, area_range, aspect_ratio_range,
                              min_object_covered=0.1, max_attempts=10,
                              seed=seed)
  bad = tf.logical_and(tf.reduce_all(tf.equal(window[2:], image_shape[:2])),
                       tf.equal(image_shape[2], 3))
  return tf.cond(bad,
                 lambda: center_crop_window(image_shape, image_size,
                                            crop_padding),
                 lambda: window)


def _crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  return tf.slice(image, [window[0], window[1], 0],
                  [window[2], window[3], -1])


def decode_and_crop(image_bytes: tf.Tensor,
                    window_fn: Optional[Callable[[tf.Tensor], tf.Tensor]]
                    ) -> tf.Tensor:
  """Decodes JPEG/PNG/BMP/GIF bytes to uint8 RGB, cropped to window_fn(shape).

  JPEGs are decoded only inside the window (`decode_and_crop_jpeg`, as the
  reference code); other formats are decoded whole, then sliced. Raises (in
  the graph) on corrupt data.
  """
  def jpeg():
    if window_fn is None:
      return tf.io.decode_jpeg(image_bytes, channels=3)
    window = window_fn(tf.image.extract_jpeg_shape(image_bytes))
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    if window_fn is None:
      return image
    return _crop(image, window_fn(tf.shape(image)))

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image


# ----------------------------------------------------------------------------
# Config checks.
# ----------------------------------------------------------------------------


def _check_params(params: mg_ic.DataConfig,
                  image_size: Optional[int]) -> None:
  """Rejects settings this pipeline would otherwise silently ignore."""
  if image_size is not None and image_size <= 0:
    raise ValueError(f'image_size must be positive, got {image_size}')
  if params.global_batch_size <= 0:
    raise ValueError(
        f'global_batch_size must be positive, got {params.global_batch_size}')
  if params.dtype not in _DTYPES:
    raise ValueError(
        f'dtype must be one of {sorted(_DTYPES)}, got {params.dtype!r}')
  resize_method = getattr(params, 'resize_method', 'bicubic')
  if resize_method not in _RESIZE_METHODS:
    raise ValueError(
        f'resize_method must be one of {_RESIZE_METHODS}, got '
        f'{resize_method!r}')
  on_bad_record = getattr(params, 'on_bad_record', 'fail')
  if on_bad_record not in ON_BAD_RECORD:
    raise ValueError(
        f'on_bad_record must be one of {ON_BAD_RECORD}, got '
        f'{on_bad_record!r}')
  if params.tfds_name:
    if not isinstance(params.tfds_name, str):
      raise ValueError(
          f'tfds_name must be a dataset name string, got {params.tfds_name!r}')
    if not params.tfds_split:
      raise ValueError(
          f'tfds_name={params.tfds_name!r} needs tfds_split (e.g. train, '
          'validation)')
    if params.input_path:
      raise ValueError(
          f'both tfds_name={params.tfds_name!r} and input_path='
          f'{params.input_path!r} are set; set exactly one source')
  unsupported = []
  if params.file_type != 'tfrecord':
    unsupported.append(f'file_type={params.file_type!r}')
  if params.is_multilabel:
    unsupported.append('is_multilabel=True')
  if params.color_jitter:
    unsupported.append(f'color_jitter={params.color_jitter}')
  if params.random_erasing is not None:
    unsupported.append('random_erasing')
  if params.three_augment:
    unsupported.append('three_augment=True')
  if params.repeated_augment:
    unsupported.append(f'repeated_augment={params.repeated_augment}')
  if params.aug_policy:
    unsupported.append(f'aug_policy={params.aug_policy!r} (use aug_type)')
  if params.mixup_and_cutmix is not None:
    unsupported.append('mixup_and_cutmix')
  if params.enable_tf_data_service:
    unsupported.append('enable_tf_data_service=True')
  if unsupported:
    raise ValueError(
        'official_ext classification_input does not support: ' +
        ', '.join(unsupported))


def build_augmenter(params: mg_ic.DataConfig):
  """Model Garden's AutoAugment / RandAugment from `params.aug_type`."""
  aug_type = params.aug_type
  if not aug_type or not aug_type.type:
    return None
  if aug_type.type == 'autoaug':
    return augment.AutoAugment(
        augmentation_name=aug_type.autoaug.augmentation_name,
        cutout_const=aug_type.autoaug.cutout_const,
        translate_const=aug_type.autoaug.translate_const)
  if aug_type.type == 'randaug':
    return augment.RandAugment(
        num_layers=aug_type.randaug.num_layers,
        magnitude=aug_type.randaug.magnitude,
        cutout_const=aug_type.randaug.cutout_const,
        translate_const=aug_type.randaug.translate_const,
        magnitude_std=aug_type.randaug.magnitude_std,
        prob_to_apply=aug_type.randaug.prob_to_apply,
        exclude_ops=aug_type.randaug.exclude_ops)
  raise ValueError(f'aug_type {aug_type.type!r} not supported')


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

  def eval_records(self, num_pipelines, pipeline_id):
    dataset = self._read_in_order()  # Sequential: deterministic order.
    if num_pipelines > 1:
      dataset = dataset.shard(num_pipelines, pipeline_id)
    return dataset

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

  def eval_records(self, num_pipelines, pipeline_id):
    dataset = self._sequential()
    if num_pipelines > 1:
      dataset = dataset.shard(num_pipelines, pipeline_id)
    return dataset

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


# ----------------------------------------------------------------------------
# Preprocessing.
# ----------------------------------------------------------------------------


# TF1's resize kernels (the ops behind tf.compat.v1.image.resize_*, without
# its deprecation warning on every run).
_LEGACY_RESIZE = {'bicubic': tf.raw_ops.ResizeBicubic,
                  'bilinear': tf.raw_ops.ResizeBilinear}


def _resize(image: tf.Tensor, image_size: int, method: str,
            half_pixel_centers: bool = False) -> tf.Tensor:
  """Float32 resize; like the reference, bicubic overshoot is not clipped
  (only the augmenters' uint8 input is).

  By default the reference's TF1 `resize_bicubic` convention: output pixel i
  samples input i * in/out (no half-pixel centers; bicubic with a = -0.75).
  `half_pixel_centers=True` is `tf.image.resize`'s convention, which samples
  (i + 0.5) * in/out - 0.5 and so shifts every image by a fraction of a
  pixel against the reference.
  """
  size = [image_size, image_size]
  if half_pixel_centers:
    return tf.image.resize(image, size, method=method)
  return _LEGACY_RESIZE[method](images=image[tf.newaxis], size=size,
                                align_corners=False,
                                half_pixel_centers=False)[0]


def normalize(image: tf.Tensor) -> tf.Tensor:
  """(image - MEAN_RGB) / STDDEV_RGB for a float image on the 0..255 scale.

  For an image of static shape [H, W, 3] the mean and stddev are whole-image
  constants: broadcasting a 3-vector over the channel axis (as
  `preprocess_ops.normalize_scaled_float_image` does) runs on a slow,
  unvectorized path, ~850 us per 224x224 image on one CPU core against ~100
  us elementwise. The arithmetic is the same, so the results are identical.
  """
  image = tf.cast(image, tf.float32)
  if (image.shape.rank != 3 or not image.shape.is_fully_defined() or
      image.shape[-1] != len(MEAN_RGB)):
    return preprocess_ops.normalize_scaled_float_image(
        image, offset=MEAN_RGB, scale=STDDEV_RGB)
  shape = image.shape.as_list()
  mean = np.broadcast_to(np.asarray(MEAN_RGB, np.float32), shape)
  stddev = np.broadcast_to(np.asarray(STDDEV_RGB, np.float32), shape)
  return (image - tf.constant(mean)) / tf.constant(stddev)


def _train_window_fn(params, image_size):
  if not params.aug_crop:
    return None
  crop_padding = params.eval_crop_padding
  area_range = tuple(params.crop_area_range or (0.08, 1.0))
  aspect_range = tuple(params.crop_aspect_ratio_range)
  return lambda shape: train_crop_window(shape, image_size, area_range,
                                         aspect_range, crop_padding)


def _eval_window_fn(params, image_size):
  if not params.aug_crop:
    return None
  crop_padding = params.eval_crop_padding
  return lambda shape: center_crop_window(shape, image_size, crop_padding)


def make_preprocess_fn(params: mg_ic.DataConfig, image_size: int,
                       is_training: bool):
  """Encoded image bytes -> preprocessed image [S, S, 3] in params.dtype.

  Training: random-resized crop (decoded inside the window), bicubic resize,
  random flip, AutoAugment/RandAugment, normalization. Evaluation: padded
  center crop, resize, normalization. Raises (in the graph) on corrupt data.
  """
  dtype = _DTYPES[params.dtype]
  method = params.resize_method
  half_pixel_centers = getattr(params, 'resize_half_pixel_centers', False)
  if is_training:
    window_fn = _train_window_fn(params, image_size)
    augmenter = build_augmenter(params)
    flip = params.aug_rand_hflip
  else:
    window_fn = _eval_window_fn(params, image_size)
    augmenter, flip = None, False

  def preprocess(image_bytes):
    image = _resize(decode_and_crop(image_bytes, window_fn), image_size,
                    method, half_pixel_centers)
    if flip:
      # After the resize (cheaper than before it; the two commute).
      image = tf.image.random_flip_left_right(image)
    if augmenter is not None:
      # As the reference: clip, uint8, augment, back to float.
      image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
      image = tf.cast(augmenter.distort(image), tf.float32)
    image = tf.cast(normalize(image), dtype)
    image.set_shape([image_size, image_size, 3])
    return image

  return preprocess


# ----------------------------------------------------------------------------
# Decoding with bad-record handling.
#
# A parse or decode error cannot be caught inside a TensorFlow graph, and
# `ignore_errors()` drops the failing element without saying which it was.
# So every record gets a sequence number (`enumerate`) and the locators of the
# _WINDOW records before it; decoding runs in an order-preserving map followed
# by ignore_errors(), and a scan after it finds the gaps in the sequence: the
# vanished records are the last ones in the next record's window. Read errors
# before the map (unreadable or corrupt files) are dropped by an
# ignore_errors() right after `enumerate`, which makes them gaps too; the
# block scan that attaches the windows counts those separately, and they
# always fail the pipeline (skipping them would silently lose the rest of a
# file). Evaluation streams end with a sentinel record so that trailing
# failures are seen too. The bookkeeping runs per block of records or per
# batch where it can: a sequential per-record stage costs ~20-50 us/record.
# ----------------------------------------------------------------------------


_FAIL_MODE_HINT = (' (DataConfig.on_bad_record is fail; set it to skip to '
                   'drop bad records and count them in the logs)')


def _read_failed_message(where, count):
  """'reading the input failed before <where> (<count> read error(s)...'."""
  return tf.strings.join([
      READ_FAILED, ' before ', where, ' (', tf.strings.as_string(count),
      ' read error(s): an unreadable file, a corrupt TFRecord, ...); '
      'TensorFlow logged the original error as a warning (shown with '
      'TF_CPP_MIN_LOG_LEVEL=0)'])


def _describe_window(source, window, count):
  """'L1, L2, ...' for the last `count` (<= _WINDOW shown) locators."""
  shown = tf.minimum(count, _WINDOW)
  names = tf.map_fn(source.where, window[_WINDOW - shown:],
                    fn_output_signature=tf.string)
  text = tf.strings.reduce_join(names, separator=', ')
  return tf.cond(
      count > _WINDOW,
      lambda: tf.strings.join([
          text, ' and ', tf.strings.as_string(count - _WINDOW),
          ' record(s) before them']),
      lambda: text)


def resolved_label_offset(params: mg_ic.DataConfig) -> int:
  """label_offset, or for None the ImageNet convention of the source.

  ImageNet TFRecords (the TPU repo's `imagenet_to_gcs.py`, Model Garden's
  converter) store classes 1..1000; TFDS `imagenet2012` stores 0..999.
  """
  offset = getattr(params, 'label_offset', 0)
  if offset is None:
    return 0 if params.tfds_name else 1
  return offset


def _label_offset_hint(labels: List[int], offset: int,
                       num_classes: Optional[int]) -> str:
  """'; they fit label_offset=K' when the sampled labels fit only offset K."""
  if not labels:
    return ''
  for other in (0, 1):
    if other != offset and min(labels) - other >= 0 and (
        not num_classes or max(labels) - other < num_classes):
      return (f'; the {len(labels)} sampled labels ({min(labels)}..'
              f'{max(labels)}) fit label_offset={other}')
  return '; check num_classes and label_offset'


def _label_note(label, label_offset, num_classes):
  return tf.strings.join([
      ' (stored label ', tf.strings.as_string(label + label_offset),
      f' - label_offset {label_offset} = ', tf.strings.as_string(label),
      f'; num_classes {num_classes or "not given"})'])


def _record_decoder(source, params, preprocess, image_size, num_classes):
  """(locator, record) -> (image, label - label_offset, status).

  Missing fields, out-of-range labels and sentinels (locator no_locator) get
  their status and a zero image; decoding a corrupt image raises."""
  dtype = _DTYPES[params.dtype]
  label_offset = resolved_label_offset(params)
  no_locator = source.no_locator

  def decode(locator, record):
    image_bytes, label = source.extract(record)
    label = label - label_offset
    in_range = label >= 0
    if num_classes:
      in_range = tf.logical_and(in_range, label < num_classes)
    status = tf.constant(OK)
    status = tf.where(in_range, status, LABEL_OUT_OF_RANGE)
    status = tf.where(tf.equal(tf.strings.length(image_bytes), 0), NO_IMAGE,
                      status)
    status = tf.where(tf.equal(label, _MISSING_LABEL - label_offset),
                      NO_LABEL, status)
    status = tf.where(tf.equal(locator, no_locator), SENTINEL, status)
    image = tf.cond(tf.equal(status, OK), lambda: preprocess(image_bytes),
                    lambda: tf.zeros([image_size, image_size, 3], dtype))
    return image, label, status

  return decode


def _decode_checked(records, source, params, preprocess, image_size,
                    num_classes, is_training):
  """Source elements -> (image, label[, keep]), bad records handled.

  `records` of training must hold an end-of-pass sentinel after every pass
  over the data (`source.sentinel()`); evaluation streams get one at their
  end here. Returns (image, label, keep) filtered on keep in training and in
  'skip' mode, and (image, label) in 'fail' mode evaluation (the end-of-stream
  sentinel comes out as one padding example, label -1).
  """
  dtype = _DTYPES[params.dtype]
  label_offset = resolved_label_offset(params)
  skip = params.on_bad_record == 'skip'
  no_locator = source.no_locator
  if not is_training:
    records = records.concatenate(
        tf.data.Dataset.from_tensors(source.sentinel()))

  # 1. Sequence numbers, records lost to read errors so far, the previous
  # records' locators; computed block by block (a per-record scan costs more
  # than the rest of the bookkeeping together).
  def remember(state, block):
    window, last_seq, read_errors = state
    seq, raw = block
    locator, record = source.split(raw)
    size = tf.shape(seq)[0]
    extended = tf.concat([window, locator], 0)
    windows = tf.stack([extended[j:j + size] for j in range(_WINDOW)], axis=1)
    gaps = seq - tf.concat([tf.reshape(last_seq, [1]), seq[:-1]], 0) - 1
    read_errors = read_errors + tf.cumsum(gaps)
    return ((extended[-_WINDOW:], seq[-1], read_errors[-1]),
            (seq, read_errors, locator, windows, record))

  # Read errors before this point (an unreadable file, a corrupt TFRecord)
  # consume sequence numbers: dropped here, they show as gaps that `remember`
  # counts, so blocks never lose records.
  dataset = records.enumerate().ignore_errors(log_warning=True)
  dataset = dataset.batch(_BLOCK).scan(
      (tf.fill([_WINDOW], tf.constant(no_locator, source.locator_dtype)),
       tf.constant(-1, tf.int64), tf.constant(0, tf.int64)),
      remember).unbatch()

  # 2. Parse, check, decode, preprocess (order-preserving; errors dropped).
  decode = _record_decoder(source, params, preprocess, image_size,
                           num_classes)

  def process(seq, read_errors, locator, window, record):
    image, label, status = decode(locator, record)
    return seq, read_errors, locator, window, image, label, status

  dataset = dataset.map(process, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  dataset = dataset.ignore_errors(log_warning=True)

  # 3. Find the gaps; fail, or skip and count. The common case (no gap, a
  # good record) takes one cheap branch.
  def report(seq, expected, new_read_errors, skipped, locator, window, label,
             status):
    """Fails, or prints what was skipped; returns the new skipped count."""
    undecodable = seq - expected - new_read_errors
    bad_status = tf.logical_and(tf.not_equal(status, OK),
                                tf.not_equal(status, SENTINEL))
    here = source.where(locator)
    read_ok = tf.equal(new_read_errors, 0)
    read_message = tf.cond(read_ok, lambda: tf.constant(''), lambda: (
        _read_failed_message(here, new_read_errors)))
    read_check = tf.debugging.Assert(read_ok, [read_message], summarize=1)

    def undecodable_message(prefix):
      return tf.strings.join([
          prefix, _describe_window(source, window, undecodable), ': ',
          _REASONS[UNDECODABLE]])

    def bad_status_message(prefix):
      reason = tf.gather(tf.constant(_REASONS), status)
      note = tf.cond(tf.equal(status, LABEL_OUT_OF_RANGE),
                     lambda: _label_note(label, label_offset, num_classes),
                     lambda: tf.constant(''))
      return tf.strings.join([prefix, source.where(locator), ': ', reason,
                              note])

    with tf.control_dependencies([read_check]):
      if not skip:
        ok = tf.logical_and(tf.equal(undecodable, 0),
                            tf.logical_not(bad_status))
        message = tf.cond(
            ok, lambda: tf.constant(''),
            lambda: tf.strings.join([
                tf.cond(undecodable > 0,
                        lambda: undecodable_message('bad input record: '),
                        lambda: bad_status_message('bad input record: ')),
                _FAIL_MODE_HINT]))
        with tf.control_dependencies(
            [tf.debugging.Assert(ok, [message], summarize=1)]):
          return tf.identity(skipped)

      def report_undecodable():
        total = skipped + undecodable
        tf.print(undecodable_message(tf.strings.join([
            'skipped ', tf.strings.as_string(undecodable),
            ' bad input record(s) (', tf.strings.as_string(total),
            ' so far in this input pipeline): '])), output_stream=sys.stderr)
        return total

      skipped = tf.cond(undecodable > 0, report_undecodable,
                        lambda: tf.identity(skipped))

      def report_bad_status():
        total = skipped + 1
        tf.print(bad_status_message(tf.strings.join([
            'skipped bad input record (', tf.strings.as_string(total),
            ' so far in this input pipeline): '])), output_stream=sys.stderr)
        return total

      return tf.cond(bad_status, report_bad_status,
                     lambda: tf.identity(skipped))

  def end_of_pass(seq, good, pass_start):
    """At a training end-of-pass sentinel: fails if the pass yielded no
    usable record (else training would read forever)."""
    read = seq - pass_start
    message = tf.cond(
        read > 0,
        lambda: tf.strings.join([
            NO_USABLE_RECORD, ' in a full pass over the training data of '
            'this input pipeline: all ', tf.strings.as_string(read),
            ' records were bad (on_bad_record is ', params.on_bad_record,
            '; see the skipped-record lines above); check the data and '
            'image_field_key / label_field_key (tfds_image_key / '
            'tfds_label_key)']),
        lambda: tf.constant(
            NO_USABLE_RECORD + ': a full pass over the training data of this '
            'input pipeline read no records (empty input files?)'))
    return tf.debugging.Assert(good > 0, [message], summarize=1)

  def check(state, element):
    expected, read_errors_seen, skipped, good, pass_start = state
    seq, read_errors, locator, window, image, label, status = element
    is_ok = tf.equal(status, OK)
    usual = tf.logical_and(tf.equal(seq, expected), is_ok)

    def unusual():
      new_skipped = report(seq, expected, read_errors - read_errors_seen,
                           skipped, locator, window, label, status)
      if not is_training:
        return new_skipped, good, pass_start
      sentinel = tf.equal(status, SENTINEL)

      def at_sentinel():
        with tf.control_dependencies([end_of_pass(seq, good, pass_start)]):
          return tf.constant(0, tf.int64), seq + 1

      new_good, new_start = tf.cond(
          sentinel, at_sentinel,
          lambda: (good + tf.cast(is_ok, tf.int64), tf.identity(pass_start)))
      return new_skipped, new_good, new_start

    # The common case (no gap, a good record) takes one cheap branch.
    skipped, good, pass_start = tf.cond(
        usual,
        lambda: (tf.identity(skipped), good + 1, tf.identity(pass_start)),
        unusual)
    state = (seq + 1, read_errors, skipped, good, pass_start)
    label = tf.cast(label, tf.int32)
    if skip or is_training:
      return state, (image, label, is_ok)
    # Evaluation in fail mode: only the end-of-stream sentinel gets here with
    # status != OK; it becomes one padding example.
    return state, (image, tf.where(is_ok, label, PADDING_LABEL))

  zero = tf.constant(0, tf.int64)
  dataset = dataset.scan((zero, zero, zero, zero, zero), check)
  if skip or is_training:
    dataset = dataset.filter(lambda image, label, keep: keep)
  return dataset


# Fail-mode training: records between heartbeat batches.
_HEARTBEAT_RECORDS = 4096


def _first(mask):
  return tf.argmax(tf.cast(mask, tf.int32), output_type=tf.int32)


def _train_batches_fail(records, source, params, preprocess, image_size,
                        num_classes, batch_size):
  """Fail-mode training: (locator, record) stream -> checked full batches.

  The hot path is Model Garden's: one parallel map fused with the batch
  (MapAndBatch), no per-record stage after the decode. A batch holding an
  undecodable record raises and is dropped by `ignore_errors`; the per-batch
  check that follows sees the gap in the sequence numbers and fails, naming
  the record: every record carries the locators of the previous batch's
  records (the batches are aligned with blocks of the stream), which are read
  again and fully decoded, one by one, to find which one fails. Records with
  no label / no image / a label out of range are not dropped: their status
  names them. A batch of sentinels (a heartbeat) follows every
  _HEARTBEAT_RECORDS records, so a stream whose every batch vanishes still
  fails; a stream that ends (the data holds no records) ends with a batch of
  sentinels, which fails too.
  """
  size = batch_size
  label_offset = resolved_label_offset(params)
  no_locator = source.no_locator
  sentinel = source.sentinel()
  sentinels = tf.nest.map_structure(
      lambda t: tf.fill([size], t), sentinel)
  heartbeat_blocks = max(1, math.ceil(_HEARTBEAT_RECORDS / size))
  # Only the end of data that holds no records can reach the end marker.
  records = records.concatenate(
      tf.data.Dataset.from_tensors(sentinel).repeat(size))

  def remember(state, block):
    previous, last_seq, read_errors, count = state
    seq, raw = block
    locator, _ = source.split(raw)
    gaps = seq - tf.concat([tf.reshape(last_seq, [1]), seq[:-1]], 0) - 1
    errors = read_errors + tf.cumsum(gaps)
    windows = tf.broadcast_to(previous[tf.newaxis], [size, size])
    out = (seq, errors, locator, windows, raw)
    count += 1

    def with_heartbeat():
      beat = (tf.fill([size], seq[-1] + 1), tf.fill([size], errors[-1]),
              tf.fill([size], tf.constant(no_locator, source.locator_dtype)),
              tf.broadcast_to(locator[tf.newaxis], [size, size]), sentinels)
      return tf.nest.map_structure(lambda a, b: tf.concat([a, b], 0), out,
                                   beat)

    out = tf.cond(count % heartbeat_blocks == 0, with_heartbeat, lambda: out)
    return (locator, seq[-1], errors[-1], count), out

  dataset = records.enumerate().ignore_errors(log_warning=True)
  dataset = dataset.batch(size, drop_remainder=True).scan(
      (tf.fill([size], tf.constant(no_locator, source.locator_dtype)),
       tf.constant(-1, tf.int64), tf.constant(0, tf.int64),
       tf.constant(0, tf.int64)), remember).unbatch()

  decode = _record_decoder(source, params, preprocess, image_size,
                           num_classes)

  def process(seq, errors, locator, window, raw):
    locator, record = source.split(raw)
    image, label, status = decode(locator, record)
    return seq, errors, locator, window, image, label, status

  dataset = dataset.map(process, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  dataset = dataset.batch(size, drop_remainder=True)
  dataset = dataset.ignore_errors(log_warning=True)

  def decodes(locator):
    """1 if the record at `locator` reads and fully decodes, else 0."""
    if locator.dtype == tf.string:
      sentinel_locator = tf.equal(locator, no_locator)
    else:
      sentinel_locator = locator < 0

    def try_decode():
      images = source.reread_image(locator).map(
          lambda b: tf.shape(tf.io.decode_image(
              b, channels=3, expand_animations=False))[0])
      return images.ignore_errors().reduce(
          tf.constant(0, tf.int64), lambda n, _: n + 1)

    return tf.cond(sentinel_locator, lambda: tf.constant(1, tf.int64),
                   try_decode)

  def vanished_message(candidates):
    listed = tf.strings.reduce_join(
        tf.map_fn(source.where, candidates, fn_output_signature=tf.string),
        separator=', ')
    fallback = tf.strings.join([
        'bad input record: one of ', listed, ': ', _REASONS[UNDECODABLE]])
    if source.reread_image(candidates[0]) is None:
      return fallback
    ok = tf.map_fn(decodes, candidates, fn_output_signature=tf.int64)
    found = tf.reduce_any(tf.equal(ok, 0))
    i = _first(tf.equal(ok, 0))
    return tf.cond(found, lambda: tf.strings.join([
        'bad input record: ', source.where(candidates[i]), ': ',
        _REASONS[UNDECODABLE]]), lambda: fallback)

  def check(state, batch):
    expected, errors_seen = state
    seq, errors, locator, window, image, label, status = batch
    beat = tf.equal(status[0], SENTINEL)
    new_errors = errors[-1] - errors_seen
    vanished = seq[0] - expected - (errors[0] - errors_seen)
    bad_status = tf.logical_and(tf.logical_not(beat),
                                tf.reduce_any(tf.not_equal(status, OK)))
    empty = tf.logical_and(beat, tf.equal(seq[0], 0))
    ok = tf.logical_not(tf.reduce_any(tf.stack([
        new_errors > 0, vanished > 0, bad_status, empty])))

    def message():
      def read_failed():
        i = _first(errors > errors_seen)
        return _read_failed_message(source.where(locator[i]), new_errors)

      def bad_record():
        i = _first(tf.not_equal(status, OK))
        note = tf.cond(tf.equal(status[i], LABEL_OUT_OF_RANGE),
                       lambda: _label_note(label[i], label_offset,
                                           num_classes),
                       lambda: tf.constant(''))
        return tf.strings.join([
            'bad input record: ', source.where(locator[i]), ': ',
            tf.gather(tf.constant(_REASONS), status[i]), note,
            _FAIL_MODE_HINT])

      def other():
        return tf.cond(
            vanished > 0,
            lambda: tf.strings.join([vanished_message(window[0]),
                                     _FAIL_MODE_HINT]),
            lambda: tf.cond(bad_status, bad_record, lambda: tf.constant(
                NO_USABLE_RECORD + ': a full pass over the training data '
                'of this input pipeline read no records (empty input '
                'files?)')))

      return tf.cond(new_errors > 0, read_failed, other)

    text = tf.cond(ok, lambda: tf.constant(''), message)
    with tf.control_dependencies(
        [tf.debugging.Assert(ok, [text], summarize=1)]):
      keep = tf.logical_not(beat)
    expected = tf.where(beat, expected, seq[-1] + 1)
    return (expected, errors[-1]), (image, tf.cast(label, tf.int32), keep)

  zero = tf.constant(0, tf.int64)
  dataset = dataset.scan((zero, zero), check)
  dataset = dataset.filter(lambda images, labels, keep: keep)
  return dataset.map(lambda images, labels, keep: (images, labels))


def input_error_message(error: BaseException) -> Optional[str]:
  """The one-line message of an input-pipeline error raised while running.

  `error` is what a training/evaluation loop raised; returns the pipeline's
  message (naming the file and record) if it is a TensorFlow error raised by
  this pipeline's checks (a bad record in fail mode, a read error, no usable
  record in a full pass), else None.
  """
  if not isinstance(error, tf.errors.OpError):
    return None
  for line in (error.message or '').splitlines():
    for prefix in INPUT_ERROR_PREFIXES:
      start = line.find(prefix)
      if start < 0:
        continue
      message = line[start:].rstrip()
      # tf.debugging.Assert shows its data as "assertion failed: [message]".
      if line[:start].rstrip().endswith('[') and message.endswith(']'):
        message = message[:-1].rstrip()
      return message
  return None


def _batch(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
  """Batches (image, label[, keep]) elements into (images, labels)."""
  dataset = dataset.batch(batch_size, drop_remainder=True)
  if len(dataset.element_spec) == 3:
    dataset = dataset.map(lambda images, labels, keep: (images, labels))
  return dataset


# ----------------------------------------------------------------------------
# Datasets.
# ----------------------------------------------------------------------------


def _pipelines(input_context: Optional[tf.distribute.InputContext],
               global_batch_size: int) -> Tuple[int, int, int]:
  """(num_pipelines, pipeline_id, per_replica_batch)."""
  if input_context is None:
    return 1, 0, global_batch_size
  per_replica = input_context.get_per_replica_batch_size(global_batch_size)
  return (input_context.num_input_pipelines, input_context.input_pipeline_id,
          per_replica)


def _build_train(params, source, image_size, input_context, num_pipelines,
                 pipeline_id, per_replica_batch, num_classes):
  dataset = source.train_records(params, input_context, num_pipelines,
                                 pipeline_id)
  if params.cache:
    dataset = dataset.cache()
  dataset = dataset.shuffle(params.shuffle_buffer_size, seed=params.seed,
                            reshuffle_each_iteration=True)
  preprocess = make_preprocess_fn(params, image_size, True)
  if params.on_bad_record == 'fail':
    return _train_batches_fail(dataset.repeat(), source, params, preprocess,
                               image_size, num_classes, per_replica_batch)
  # An end-of-pass sentinel after every pass: a pass that yields no usable
  # record fails instead of repeating forever.
  dataset = dataset.concatenate(
      tf.data.Dataset.from_tensors(source.sentinel()))
  dataset = dataset.repeat()
  dataset = _decode_checked(dataset, source, params, preprocess, image_size,
                            num_classes, is_training=True)
  return _batch(dataset, per_replica_batch)


def eval_padded_examples_per_pipeline(num_examples: int,
                                      global_batch_size: int,
                                      num_pipelines: int) -> int:
  """Examples (real + padding) each eval pipeline yields."""
  if global_batch_size % num_pipelines:
    raise ValueError(
        f'global_batch_size {global_batch_size} is not divisible by '
        f'{num_pipelines} input pipelines')
  steps = math.ceil(num_examples / global_batch_size)
  return steps * (global_batch_size // num_pipelines)


def _build_eval(params, source, image_size, num_pipelines, pipeline_id,
                per_replica_batch, num_classes):
  num_real = source.num_records()
  where = params.tfds_name or params.input_path
  num_examples = params.num_examples
  if num_examples <= 0:
    raise ValueError(
        'exact evaluation needs params.num_examples (the eval split size); it '
        f'is {num_examples}, while {where!r} holds {num_real} records')
  if num_examples < num_real:
    raise ValueError(
        f'params.num_examples={num_examples} is smaller than the {num_real} '
        f'records in {where!r}; evaluation would drop examples')
  if num_examples > num_real:
    logging.warning(
        'params.num_examples=%d but %r holds only %d records; the extra '
        'batches are all padding', num_examples, where, num_real)
  per_pipeline = eval_padded_examples_per_pipeline(
      num_examples, params.global_batch_size, num_pipelines)
  if per_pipeline % per_replica_batch:
    raise ValueError(
        f'per-pipeline eval batch {params.global_batch_size // num_pipelines} '
        f'is not a multiple of the per-replica batch {per_replica_batch}')

  dataset = source.eval_records(num_pipelines, pipeline_id)
  if params.cache:
    dataset = dataset.cache()
  dataset = _decode_checked(
      dataset, source, params, make_preprocess_fn(params, image_size, False),
      image_size, num_classes, is_training=False)
  dtype = _DTYPES[params.dtype]
  padding = (tf.zeros([image_size, image_size, 3], dtype),
             tf.constant(PADDING_LABEL, tf.int32))
  if len(dataset.element_spec) == 3:
    padding += (tf.constant(False),)
  padding = tf.data.Dataset.from_tensors(padding).repeat()
  dataset = dataset.concatenate(padding).take(per_pipeline)
  dataset = dataset.apply(tf.data.experimental.assert_cardinality(per_pipeline))
  return _batch(dataset, per_replica_batch)


def build_dataset(
    params: mg_ic.DataConfig,
    *,
    image_size: int,
    input_context: Optional[tf.distribute.InputContext] = None,
    num_classes: Optional[int] = None,
) -> tf.data.Dataset:
  """Builds one input pipeline of (images, labels) batches.

  Args:
    params: an `official_ext.vision.configs.image_classification.DataConfig`
      (Model Garden's DataConfig plus num_examples, crop_aspect_ratio_range,
      eval_crop_padding, resize_method, resize_half_pixel_centers,
      label_offset, on_bad_record,
      tfds_image_key, tfds_label_key).
    image_size: output images are image_size x image_size x 3.
    input_context: from `distribute_datasets_from_function`; None means one
      pipeline feeding one replica with the global batch.
    num_classes: if given, a label outside [0, num_classes) (after
      label_offset) is a bad record; negative labels always are.

  Returns:
    Batches of per-replica size, all full: images [b, S, S, 3] in
    params.dtype, normalized with ImageNet mean/std; labels int32 [b]
    (stored label - label_offset). Training repeats forever. Evaluation is
    finite, with padding examples labelled -1 (see module docstring).
  """
  _check_params(params, image_size)
  source = _make_source(params)
  num_pipelines, pipeline_id, per_replica_batch = _pipelines(
      input_context, params.global_batch_size)
  if params.is_training:
    dataset = _build_train(params, source, image_size, input_context,
                           num_pipelines, pipeline_id, per_replica_batch,
                           num_classes)
  else:
    dataset = _build_eval(params, source, image_size, num_pipelines,
                          pipeline_id, per_replica_batch, num_classes)
  return dataset.prefetch(params.prefetch_buffer_size or tf.data.AUTOTUNE)


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


def _sample_tfds_labels(source: '_TFDSSource', max_records):
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
    source = _TFDSSource(params)
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
    source = _TFRecordSource(params)
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
