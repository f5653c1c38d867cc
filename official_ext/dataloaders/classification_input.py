"""Image-classification input pipeline for the EfficientNet recipe.

`build_dataset` is the `dataset_fn` given to
`strategy.distribute_datasets_from_function` (Orbit/Model Garden): each call
builds one input pipeline and batches by the PER-REPLICA batch size.

Training follows the reference EfficientNet preprocessing: Inception-style
random-resized crop (falling back to a padded center crop when sampling
fails), random horizontal flip, bicubic (or bilinear) resize, optional
AutoAugment/RandAugment (Model Garden's augmenters), ImageNet mean/std
normalization.

Evaluation is exact: records are sharded across input pipelines, and every
pipeline's shard is padded with dummy examples (zero image, label -1) up to
`ceil(num_examples / global_batch_size) * global_batch_size / num_pipelines`
examples, so every pipeline yields the same number of full batches and every
real example is seen exactly once. Metrics must mask label -1.
"""
import math
from typing import List, Optional, Sequence, Tuple

from absl import logging
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
_DTYPES = {'float32': tf.float32, 'bfloat16': tf.bfloat16,
           'float16': tf.float16}
_RESIZE_METHODS = ('bicubic', 'bilinear')

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
    with tf.init_scope():  # Count eagerly even if called inside a tf.function.
      count = tf.data.TFRecordDataset(list(files)).reduce(
          tf.constant(0, tf.int64), lambda n, _: n + 1)
      _RECORD_COUNT_CACHE[key] = int(count.numpy())
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
  whole image (sampling failed), use the padded center crop instead.
  """
  image_shape = tf.cast(image_shape, tf.int32)
  window = sample_crop_window(image_shape, area_range, aspect_ratio_range,
                              min_object_covered=0.1, max_attempts=10,
                              seed=seed)
  bad = tf.reduce_all(tf.equal(window[2:], image_shape[:2]))
  return tf.cond(bad,
                 lambda: center_crop_window(image_shape, image_size,
                                            crop_padding),
                 lambda: window)


def _crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  return tf.slice(image, [window[0], window[1], 0],
                  [window[2], window[3], -1])


# ----------------------------------------------------------------------------
# Parsing.
# ----------------------------------------------------------------------------


def _check_params(params: mg_ic.DataConfig, image_size: int) -> None:
  """Rejects settings this pipeline would otherwise silently ignore."""
  if image_size <= 0:
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
  unsupported = []
  if params.tfds_name:
    unsupported.append(f'tfds_name={params.tfds_name!r}')
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
  if params.enable_tf_data_service:
    unsupported.append('enable_tf_data_service=True')
  if unsupported:
    raise ValueError(
        'official_ext classification_input does not support: ' +
        ', '.join(unsupported))


def _build_augmenter(params: mg_ic.DataConfig):
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
        prob_to_apply=aug_type.randaug.prob_to_apply,
        exclude_ops=aug_type.randaug.exclude_ops)
  raise ValueError(f'aug_type {aug_type.type!r} not supported')


def _resize(image: tf.Tensor, image_size: int, method: str) -> tf.Tensor:
  image = tf.image.resize(tf.cast(image, tf.float32),
                          [image_size, image_size], method=method)
  return tf.clip_by_value(image, 0.0, 255.0)


def normalize(image: tf.Tensor) -> tf.Tensor:
  """(image - MEAN_RGB) / STDDEV_RGB for a float image on the 0..255 scale."""
  return preprocess_ops.normalize_scaled_float_image(
      tf.cast(image, tf.float32), offset=MEAN_RGB, scale=STDDEV_RGB)


def _decode(serialized: tf.Tensor, params: mg_ic.DataConfig):
  features = tf.io.parse_single_example(serialized, {
      params.image_field_key: tf.io.FixedLenFeature((), tf.string),
      params.label_field_key: tf.io.FixedLenFeature((), tf.int64),
  })
  image = tf.io.decode_image(features[params.image_field_key], channels=3,
                             expand_animations=False)
  image.set_shape([None, None, 3])
  label = tf.cast(features[params.label_field_key] - params.label_offset,
                  tf.int32)
  return image, label


def _make_train_parser(params: mg_ic.DataConfig, image_size: int):
  dtype = _DTYPES[params.dtype]
  resize_method = getattr(params, 'resize_method', 'bicubic')
  crop_padding = getattr(params, 'eval_crop_padding', 32)
  area_range = tuple(params.crop_area_range or (0.08, 1.0))
  aspect_range = tuple(
      getattr(params, 'crop_aspect_ratio_range', (3. / 4., 4. / 3.)))
  augmenter = _build_augmenter(params)

  def parse(serialized):
    image, label = _decode(serialized, params)
    if params.aug_crop:
      window = train_crop_window(tf.shape(image), image_size, area_range,
                                 aspect_range, crop_padding)
      image = _crop(image, window)
    if params.aug_rand_hflip:
      image = tf.image.random_flip_left_right(image)
    image = _resize(image, image_size, resize_method)
    if augmenter is not None:
      image = tf.clip_by_value(augmenter.distort(image), 0.0, 255.0)
      image = tf.cast(image, tf.float32)
    image = normalize(image)
    image = tf.cast(image, dtype)
    image.set_shape([image_size, image_size, 3])
    return image, label

  return parse


def _make_eval_parser(params: mg_ic.DataConfig, image_size: int):
  dtype = _DTYPES[params.dtype]
  resize_method = getattr(params, 'resize_method', 'bicubic')
  crop_padding = getattr(params, 'eval_crop_padding', 32)

  def parse(serialized):
    image, label = _decode(serialized, params)
    if params.aug_crop:
      image = _crop(image, center_crop_window(tf.shape(image), image_size,
                                              crop_padding))
    image = _resize(image, image_size, resize_method)
    image = normalize(image)
    image = tf.cast(image, dtype)
    image.set_shape([image_size, image_size, 3])
    return image, label

  return parse


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


def _build_train(params, files, image_size, num_pipelines, pipeline_id,
                 per_replica_batch) -> tf.data.Dataset:
  deterministic = params.deterministic
  if len(files) >= num_pipelines:
    # Shard files, then shuffle this pipeline's files and interleave them.
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if num_pipelines > 1:
      file_ds = file_ds.shard(num_pipelines, pipeline_id)
    num_files = len(range(pipeline_id, len(files), num_pipelines))
    file_ds = file_ds.shuffle(num_files, seed=params.seed,
                              reshuffle_each_iteration=True)
    dataset = file_ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=params.cycle_length or tf.data.AUTOTUNE,
        block_length=params.block_length,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=bool(deterministic))
  else:
    # Fewer files than pipelines: read all files in a fixed order (identical in
    # every pipeline) and shard records.
    logging.info('%d files < %d input pipelines: sharding records.',
                 len(files), num_pipelines)
    dataset = tf.data.TFRecordDataset(files).shard(num_pipelines, pipeline_id)
  if params.cache:
    dataset = dataset.cache()
  dataset = dataset.shuffle(params.shuffle_buffer_size, seed=params.seed,
                            reshuffle_each_iteration=True)
  dataset = dataset.repeat()
  dataset = dataset.map(_make_train_parser(params, image_size),
                        num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=deterministic)
  dataset = dataset.batch(per_replica_batch, drop_remainder=True)
  return dataset


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


def _build_eval(params, files, image_size, num_pipelines, pipeline_id,
                per_replica_batch) -> tf.data.Dataset:
  num_real = count_records(files)
  num_examples = params.num_examples if hasattr(params, 'num_examples') else 0
  if num_examples <= 0:
    raise ValueError(
        'exact evaluation needs params.num_examples (the eval split size); it '
        f'is {num_examples}, while {params.input_path!r} holds {num_real} '
        'records')
  if num_examples < num_real:
    raise ValueError(
        f'params.num_examples={num_examples} is smaller than the {num_real} '
        f'records in {params.input_path!r}; evaluation would drop examples')
  if num_examples > num_real:
    logging.warning(
        'params.num_examples=%d but %r holds only %d records; the extra '
        'batches are all padding', num_examples, params.input_path, num_real)
  per_pipeline = eval_padded_examples_per_pipeline(
      num_examples, params.global_batch_size, num_pipelines)
  if per_pipeline % per_replica_batch:
    raise ValueError(
        f'per-pipeline eval batch {params.global_batch_size // num_pipelines} '
        f'is not a multiple of the per-replica batch {per_replica_batch}')

  dataset = tf.data.TFRecordDataset(files)  # Sequential: deterministic order.
  if num_pipelines > 1:
    dataset = dataset.shard(num_pipelines, pipeline_id)
  if params.cache:
    dataset = dataset.cache()
  dataset = dataset.map(_make_eval_parser(params, image_size),
                        num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  dtype = _DTYPES[params.dtype]
  padding = tf.data.Dataset.from_tensors(
      (tf.zeros([image_size, image_size, 3], dtype),
       tf.constant(PADDING_LABEL, tf.int32))).repeat()
  dataset = dataset.concatenate(padding).take(per_pipeline)
  dataset = dataset.apply(tf.data.experimental.assert_cardinality(per_pipeline))
  dataset = dataset.batch(per_replica_batch, drop_remainder=True)
  return dataset


def build_dataset(
    params: mg_ic.DataConfig,
    *,
    image_size: int,
    input_context: Optional[tf.distribute.InputContext] = None
) -> tf.data.Dataset:
  """Builds one input pipeline of (images, labels) batches.

  Args:
    params: an `official_ext.vision.configs.image_classification.DataConfig`
      (Model Garden's DataConfig plus num_examples, crop_aspect_ratio_range,
      eval_crop_padding, resize_method, label_offset).
    image_size: output images are image_size x image_size x 3.
    input_context: from `distribute_datasets_from_function`; None means one
      pipeline feeding one replica with the global batch.

  Returns:
    Batches of per-replica size, all full: images [b, S, S, 3] in
    params.dtype, normalized with ImageNet mean/std; labels int32 [b]
    (stored label - label_offset). Training repeats forever. Evaluation is
    finite, with padding examples labelled -1 (see module docstring).
  """
  _check_params(params, image_size)
  files = list_files(params.input_path)
  num_pipelines, pipeline_id, per_replica_batch = _pipelines(
      input_context, params.global_batch_size)
  if params.is_training:
    dataset = _build_train(params, files, image_size, num_pipelines,
                           pipeline_id, per_replica_batch)
  else:
    dataset = _build_eval(params, files, image_size, num_pipelines,
                          pipeline_id, per_replica_batch)
  return dataset.prefetch(params.prefetch_buffer_size or tf.data.AUTOTUNE)
