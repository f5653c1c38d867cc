"""Bad records: the checks every record passes, 'skip' mode's drop-and-count,
and the diagnosis of a failed run, which names the bad record off the hot path.

A record is bad if it cannot be parsed, has no label or no image, its image
cannot be decoded, or its label minus label_offset is outside [0,
num_classes).

  - 'fail' (default): the pipeline is the plain read -> decode -> batch. A
    missing field or a label out of range fails an assertion in the decode
    map ("bad input record: <reason>"); an undecodable image fails the decode
    op itself. Neither names the record: `input_error_message`, called by
    the training loop with the TensorFlow error, re-scans the splits' files
    in order with the same checks (in a separate tf.data pipeline, only
    after a failure) and names the first bad record: "bad input record:
    file F record I: <reason> (...)". A read error (an unreadable file, a
    corrupt TFRecord) is named by the same re-scan: "reading the input
    failed: file F after record I: <TensorFlow's reason>".
  - 'skip': records carry their locator (file and record index; the tfds_id
    for TFDS), every record is decoded inside its own one-element dataset
    whose error is caught (`_try_decode`), and a scan drops the bad ones and
    prints each with a running count: "skipped bad input record (N so far in
    this input pipeline): file F record I: <reason>". Read errors fail as in
    'fail' mode (skipping them would silently lose the rest of a file).

A training pass that yields no usable record fails instead of repeating
forever: in 'skip' mode an end-of-pass sentinel after every pass checks that
the pass kept a record ("no usable input record in a full pass ..."); in
'fail' mode every bad record fails anyway, and data with no records at all
ends the repeated stream, after which a failing element follows
(`no_records_error`).
"""
import sys
from typing import List, Optional, Sequence

from absl import logging
import tensorflow as tf

from official.vision.configs import image_classification as mg_ic

from official_ext.dataloaders.preprocessing import _DTYPES, decode_and_crop
from official_ext.dataloaders.sources import _MISSING_LABEL, _make_source

# Every error of the pipeline that `input_error_message` passes on as is
# starts with one of these.
BAD_RECORD = 'bad input record'
READ_FAILED = 'reading the input failed'
NO_USABLE_RECORD = 'no usable input record'

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
_FAIL_MODE_HINT = (' (DataConfig.on_bad_record is fail; set it to skip to '
                   'drop bad records and count them in the logs)')
_EMPTY = (NO_USABLE_RECORD + ': a full pass over the training data of this '
          'input pipeline read no records (empty input files?)')

# Parts of the messages of TensorFlow errors raised by reading, parsing or
# decoding a record inside a tf.data pipeline.
_INPUT_ERROR_MARKERS = ('IteratorGetNext', 'Iterator::', 'corrupted record',
                        'truncated record', 'Invalid JPEG data',
                        'Unknown image file format', 'ExtractJpegShape',
                        'DecodeJpeg', 'DecodeAndCropJpeg', 'DecodeImage',
                        'DecodePng', 'ParseSingleExample', 'ParseExample')


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


def _status(source, params, num_classes, record):
  """(image bytes, label - label_offset, status) of a record, checked in the
  graph (parsing may raise; the image is not decoded here)."""
  label_offset = resolved_label_offset(params)
  image_bytes, label = source.extract(record)
  label = label - label_offset
  in_range = label >= 0
  if num_classes:
    in_range = tf.logical_and(in_range, label < num_classes)
  status = tf.where(in_range, OK, LABEL_OUT_OF_RANGE)
  status = tf.where(tf.equal(tf.strings.length(image_bytes), 0), NO_IMAGE,
                    status)
  status = tf.where(tf.equal(label, _MISSING_LABEL - label_offset), NO_LABEL,
                    status)
  return image_bytes, label, status


def fail_mode_decoder(source, params, preprocess, num_classes):
  """(record[, position]) -> (image, int32 label): the plain decode map of
  'fail' mode; a bad record raises (see module docstring)."""

  messages = tf.constant([f'{BAD_RECORD}: {reason}' for reason in _REASONS])

  def decode(record, position=None):
    image_bytes, label, status = _status(source, params, num_classes, record)
    check = tf.debugging.Assert(tf.equal(status, OK),
                                [tf.gather(messages, status)], summarize=1)
    with tf.control_dependencies([check]):
      image = preprocess(image_bytes, position)
    return image, tf.cast(label, tf.int32)

  return decode


def _try_decode(dataset, source, params, decode_image, image_shape, dtype,
                num_classes):
  """(locator, record) elements -> (locator, image, label, status).

  Never raises for a bad record: each record is decoded inside a
  one-element dataset whose error `ignore_errors` drops, followed by an
  UNDECODABLE element that only a failed decode lets through. Sentinel
  elements (locator `source.no_locator`) get status SENTINEL.
  """
  zeros = tf.zeros(image_shape, dtype)

  def attempt(locator, record):
    sentinel = tf.equal(locator, source.no_locator)

    def decode(record):
      image_bytes, label, status = _status(source, params, num_classes,
                                           record)
      status = tf.where(sentinel, SENTINEL, status)
      image = tf.cond(tf.equal(status, OK),
                      lambda: tf.cast(decode_image(image_bytes), dtype),
                      lambda: zeros)
      return locator, image, label, status

    failed = (locator, zeros, tf.constant(0, tf.int64),
              tf.where(sentinel, SENTINEL, UNDECODABLE))
    return (tf.data.Dataset.from_tensors(record).map(decode).ignore_errors()
            .concatenate(tf.data.Dataset.from_tensors(failed)).take(1))

  return dataset.interleave(attempt, cycle_length=16,
                            num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)


def skip_bad_records(dataset, source, params, preprocess, image_size,
                     num_classes, is_training):
  """'skip' mode: (locator, record) elements -> (image, int32 label) of the
  good records; each bad one is printed to stderr with the running count.

  Training elements must hold `source.sentinel()` after every pass: a pass
  that kept no record fails (NO_USABLE_RECORD)."""
  label_offset = resolved_label_offset(params)
  dtype = _DTYPES[params.dtype]
  dataset = _try_decode(dataset, source, params, preprocess,
                        [image_size, image_size, 3], dtype, num_classes)

  def end_of_pass(good, read):
    message = tf.cond(
        read > 0,
        lambda: tf.strings.join([
            NO_USABLE_RECORD, ' in a full pass over the training data of '
            'this input pipeline: all ', tf.strings.as_string(read),
            ' records were bad (on_bad_record is skip; see the '
            'skipped-record lines above); check the data and '
            'image_field_key / label_field_key (tfds_image_key / '
            'tfds_label_key)']),
        lambda: tf.constant(_EMPTY))
    return tf.debugging.Assert(good > 0, [message], summarize=1)

  def count(state, element):
    skipped, good, read = state
    locator, image, label, status = element

    def at_sentinel():
      if not is_training:
        return tf.identity(skipped), tf.identity(good), tf.identity(read)
      with tf.control_dependencies([end_of_pass(good, read)]):
        return tf.identity(skipped), tf.constant(0, tf.int64), tf.constant(
            0, tf.int64)

    def report():
      note = tf.cond(tf.equal(status, LABEL_OUT_OF_RANGE),
                     lambda: _label_note(label, label_offset, num_classes),
                     lambda: tf.constant(''))
      tf.print(tf.strings.join([
          'skipped bad input record (', tf.strings.as_string(skipped + 1),
          ' so far in this input pipeline): ', source.where(locator), ': ',
          tf.gather(tf.constant(_REASONS), status), note]),
               output_stream=sys.stderr)
      return skipped + 1, tf.identity(good), read + 1

    def bad():
      return tf.cond(tf.equal(status, SENTINEL), at_sentinel, report)

    state = tf.cond(tf.equal(status, OK),
                    lambda: (tf.identity(skipped), good + 1, read + 1), bad)
    return state, (image, tf.cast(label, tf.int32), tf.equal(status, OK))

  zero = tf.constant(0, tf.int64)
  dataset = dataset.scan((zero, zero, zero), count)
  dataset = dataset.filter(lambda image, label, keep: keep)
  return dataset.map(lambda image, label, keep: (image, label))


def no_records_error(element_spec) -> tf.data.Dataset:
  """One element of `element_spec` that fails with 'read no records' when
  produced: appended to a repeated stream, only reached if it ends (the
  data holds no records)."""

  def fail(_):
    check = tf.debugging.Assert(False, [tf.constant(_EMPTY)], summarize=1)
    with tf.control_dependencies([check]):
      return tf.nest.map_structure(
          lambda s: tf.zeros([d or 0 for d in s.shape], s.dtype),
          element_spec)

  return tf.data.Dataset.from_tensors(0).map(fail)


# ----------------------------------------------------------------------------
# Diagnosis after a failure.
# ----------------------------------------------------------------------------


def find_bad_record(params: mg_ic.DataConfig,
                    num_classes: Optional[int] = None) -> Optional[str]:
  """Re-scans a split's records in order; the one-line message of the first
  bad record (or read error), or None if every record is fine.

  Reads and decodes every record up to the first bad one (in parallel): a
  full split costs about one pass of evaluation-like decoding.
  """
  source = _make_source(params)
  records = source.eval_records(1, 0, by_file=False, locators=True)
  statuses = _try_decode(
      records, source, params, lambda b: decode_and_crop(b, None)[:1, :1],
      [1, 1, 3], tf.uint8, num_classes).map(
          lambda locator, image, label, status: (locator, label, status))
  label_offset = resolved_label_offset(params)
  last = None
  try:
    for locators, labels, status in statuses.batch(256).as_numpy_iterator():
      bad = (status != OK).nonzero()[0]
      if bad.size:
        i = bad[0]
        reason = _REASONS[status[i]]
        if status[i] == LABEL_OUT_OF_RANGE:
          reason += (f' (stored label {labels[i] + label_offset} - '
                     f'label_offset {label_offset} = {labels[i]}; '
                     f'num_classes {num_classes or "not given"})')
        return f'{BAD_RECORD}: {source.name(locators[i])}: {reason}'
      last = locators[-1]
  except tf.errors.OpError as e:
    found = source.find_read_error()
    if found is None:
      lines = [l for l in (e.message or '').splitlines() if l.strip()]
      found = (f'{source.describe()}, after '
               f'{source.name(last) if last is not None else "no record"}: '
               f'{type(e).__name__}: {lines[0][:300] if lines else ""}')
    return f'{READ_FAILED}: {found}'
  return None


def _pipeline_message(error: tf.errors.OpError) -> Optional[str]:
  """The pipeline's own message in `error` (a tf.debugging.Assert's data
  shows as "assertion failed: [message]"), or None."""
  for line in (error.message or '').splitlines():
    for prefix in (BAD_RECORD + ': ', NO_USABLE_RECORD):
      start = line.find(prefix)
      if start >= 0:
        message = line[start:].rstrip()
        if line[:start].rstrip().endswith('[') and message.endswith(']'):
          message = message[:-1].rstrip()
        return message
  return None


def input_error_message(error: BaseException,
                        data_params: Sequence[mg_ic.DataConfig] = (),
                        num_classes: Optional[int] = None) -> Optional[str]:
  """The one-line message of an input-pipeline error raised while running.

  `error` is what a training/evaluation loop raised; `data_params` the
  DataConfigs of the splits it read (one or a sequence, smaller splits
  first: they are re-scanned in this order). Returns None unless `error` is a
  TensorFlow error of reading, parsing, checking or decoding a record. For a
  bad record or a read error, the splits' files are re-scanned to name the
  first bad record (see `find_bad_record`; this reads up to all of them).
  """
  if not isinstance(error, (tf.errors.InvalidArgumentError,
                            tf.errors.DataLossError)):
    return None
  own = _pipeline_message(error)
  if own is not None and own.startswith(NO_USABLE_RECORD):
    return own
  text = error.message or ''
  if own is None and not any(m in text for m in _INPUT_ERROR_MARKERS):
    return None
  if isinstance(data_params, mg_ic.DataConfig):
    data_params = [data_params]
  if not data_params:
    return own
  for params in data_params:
    if getattr(params, 'embedded_dataset', ''):
      from official_ext.dataloaders import embedded_datasets  # pylint: disable=g-import-not-at-top
      params = embedded_datasets.materialize(params)
    logging.warning('the input pipeline failed; re-scanning %s to name the '
                    'bad record', params.tfds_name or params.input_path)
    try:
      found = find_bad_record(params, num_classes)
    except ValueError:  # The files are gone (or were never there).
      continue
    if found is not None:
      return found + (_FAIL_MODE_HINT if found.startswith(BAD_RECORD) else '')
  if own is not None:
    return f'{own} (a re-scan of the input found no bad record)'
  first = text.strip().splitlines()[0] if text.strip() else ''
  first = first.split('}} ', 1)[-1].split(' [Op:')[0]  # TF's decorations.
  return (f'{BAD_RECORD}: the input pipeline failed ({first[:300]}), but a '
          're-scan of the input found no bad record')
