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

Evaluation is exact: each input pipeline reads only its own eval files
(files i, i+P, ...; TFDS: its own file instructions) when there are at least
as many files as pipelines and every pipeline's share fits the common padded
length (`eval_reads_own_files`; per-file record counts come from TFDS
metadata, or are counted once per process for TFRecords); otherwise records
are sharded. Every pipeline's records are padded with dummy examples (zero
image, label -1) up to
`ceil(num_examples / global_batch_size) * global_batch_size / num_pipelines`
examples, so every pipeline yields the same number of full batches and every
real example is seen exactly once. Metrics must mask label -1.

Bad records (`DataConfig.on_bad_record`; see `bad_records`): a record that
cannot be parsed, has no label or no image, whose image cannot be decoded, or
whose label is outside [0, num_classes) after the offset, either
  - 'fail' (default): stops the input pipeline. The pipeline is the plain
    read -> decode/augment -> batch; `input_error_message` turns the
    TensorFlow error the training loop raises into one line naming the file
    and record index ("bad input record: file F record I: reason ..."),
    found by re-scanning the splits' files after the failure;
  - 'skip': is dropped, and each drop is printed to stderr with the running
    count of drops of that input pipeline ("skipped bad input record (N so
    far in this input pipeline): file F record I: reason").
Read errors of the files themselves (an unreadable file, a corrupt TFRecord)
always fail. Training never reads forever: a pass with no usable record
fails ("no usable input record ...").

`check_source` is the pre-flight check run before training (missing files,
unknown or unprepared TFDS datasets, labels out of range and undecodable
images in a sample); it does not start the TensorFlow runtime.
"""
from typing import Optional, Tuple

from absl import logging
import tensorflow as tf

from official.vision.configs import image_classification as mg_ic
from official.vision.ops import augment

from official_ext.dataloaders.preprocessing import (  # pylint: disable=unused-import
    MEAN_RGB,
    ON_BAD_RECORD,
    PADDING_LABEL,
    STDDEV_RGB,
    _DTYPES,
    _LEGACY_RESIZE,
    _RESIZE_METHODS,
    _check_params,
    _crop,
    _eval_window_fn,
    _resize,
    _train_window_fn,
    build_augmenter,
    center_crop_window,
    decode_and_crop,
    make_preprocess_fn,
    normalize,
    sample_crop_window,
    train_crop_window,
)
from official_ext.dataloaders.sources import (  # pylint: disable=unused-import
    _FILE_STRIDE,
    _MISSING_LABEL,
    _RECORD_COUNT_CACHE,
    TFRecordSource,
    _make_source,
    _split_patterns,
    count_records,
    file_record_counts,
    list_files,
    pipeline_files,
)
from official_ext.dataloaders.bad_records import (  # pylint: disable=unused-import
    BAD_RECORD,
    LABEL_OUT_OF_RANGE,
    NO_IMAGE,
    NO_LABEL,
    NO_USABLE_RECORD,
    OK,
    READ_FAILED,
    SENTINEL,
    UNDECODABLE,
    _REASONS,
    fail_mode_decoder,
    find_bad_record,
    input_error_message,
    no_records_error,
    resolved_label_offset,
    skip_bad_records,
)
from official_ext.dataloaders.eval_sharding import (  # pylint: disable=unused-import
    eval_files,
    eval_padded_examples_per_pipeline,
    eval_reads_own_files,
)
from official_ext.dataloaders.preflight import (  # pylint: disable=unused-import
    DECODE_CHECK_RECORDS,
    LABEL_CHECK_RECORDS,
    _LABEL_CHECK_FILES,
    _decodable,
    _label_and_image,
    _sample_tfds_labels,
    _sample_tfrecord_labels,
    check_source,
    iter_tfrecord_file,
)

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
                 pipeline_id, per_replica_batch, num_classes, start_step):
  skip = params.on_bad_record == 'skip'
  dataset = source.train_records(params, input_context, num_pipelines,
                                 pipeline_id, locators=skip)
  if params.cache:
    dataset = dataset.cache()
  dataset = dataset.shuffle(params.shuffle_buffer_size, seed=params.seed,
                            reshuffle_each_iteration=True)
  preprocess = make_preprocess_fn(params, image_size, True)
  if skip:
    if start_step:
      raise ValueError(
          "a deterministic resume needs on_bad_record='fail' (with 'skip' the "
          'stream position of a step is not known)')
    # An end-of-pass sentinel after every pass: a pass that yields no usable
    # record fails instead of repeating forever.
    dataset = dataset.concatenate(
        tf.data.Dataset.from_tensors(source.sentinel())).repeat()
    dataset = skip_bad_records(dataset, source, params, preprocess,
                               image_size, num_classes, is_training=True)
    return dataset.batch(per_replica_batch, drop_remainder=True)
  # The hot path: read -> decode/augment -> batch.
  dataset = dataset.repeat()
  # A resumed deterministic run continues this pipeline's stream where the
  # checkpoint's step left it: the records before are read, not decoded.
  start = start_step * (params.global_batch_size // num_pipelines)
  if start:
    dataset = dataset.skip(start)
  decode = fail_mode_decoder(source, params, preprocess, num_classes)
  if params.deterministic and params.seed is not None:
    # Augmentation is a function of (seed, stream position).
    dataset = dataset.enumerate(start).map(
        lambda position, record: decode(record, position),
        num_parallel_calls=tf.data.AUTOTUNE)
  else:
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(per_replica_batch, drop_remainder=True)
  # Reached only if the repeated stream ends: the data holds no records.
  return dataset.concatenate(no_records_error(dataset.element_spec))


def _build_eval(params, source, image_size, num_pipelines, pipeline_id,
                per_replica_batch, num_classes):
  counts = source.record_counts()
  num_real = sum(counts)
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

  by_file = eval_reads_own_files(counts, num_examples,
                                 params.global_batch_size, num_pipelines)
  if num_pipelines > 1 and not by_file:
    logging.info('eval: %d files for %d input pipelines: every pipeline reads '
                 'all files and keeps 1/%d of the records.', len(counts),
                 num_pipelines, num_pipelines)
  skip = params.on_bad_record == 'skip'
  dataset = source.eval_records(num_pipelines, pipeline_id, by_file,
                                locators=skip)
  if params.cache:
    dataset = dataset.cache()
  preprocess = make_preprocess_fn(params, image_size, False)
  if skip:
    dataset = skip_bad_records(dataset, source, params, preprocess,
                               image_size, num_classes, is_training=False)
  else:
    dataset = dataset.map(
        fail_mode_decoder(source, params, preprocess, num_classes),
        num_parallel_calls=tf.data.AUTOTUNE)
  padding = (tf.zeros([image_size, image_size, 3], _DTYPES[params.dtype]),
             tf.constant(PADDING_LABEL, tf.int32))
  padding = tf.data.Dataset.from_tensors(padding).repeat()
  dataset = dataset.concatenate(padding).take(per_pipeline)
  dataset = dataset.apply(tf.data.experimental.assert_cardinality(per_pipeline))
  return dataset.batch(per_replica_batch, drop_remainder=True)


def build_dataset(
    params: mg_ic.DataConfig,
    *,
    image_size: int,
    input_context: Optional[tf.distribute.InputContext] = None,
    num_classes: Optional[int] = None,
    start_step: int = 0,
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
    start_step: training only: the stream starts after this many global
      batches (a resumed deterministic run; 0 otherwise).

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
                           num_classes, start_step)
  else:
    dataset = _build_eval(params, source, image_size, num_pipelines,
                          pipeline_id, per_replica_batch, num_classes)
  return dataset.prefetch(params.prefetch_buffer_size or tf.data.AUTOTUNE)
