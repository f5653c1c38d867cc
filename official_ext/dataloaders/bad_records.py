"""Bad-record handling: decoding with checks that name the file and record of
a bad record, fail/skip modes, and `input_error_message`.
"""
import math
import sys
from typing import List, Optional

import tensorflow as tf

from official.vision.configs import image_classification as mg_ic

from official_ext.dataloaders.preprocessing import PADDING_LABEL, _DTYPES
from official_ext.dataloaders.sources import _MISSING_LABEL

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

  def decode(locator, record, position=None):
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
    image = tf.cond(tf.equal(status, OK),
                    lambda: preprocess(image_bytes, position),
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
    image, label, status = decode(locator, record, seq)
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
                        num_classes, batch_size, start_position=0):
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

  # Sequence numbers count from the stream position (0 unless resumed).
  start = tf.constant(start_position, tf.int64)
  dataset = records.enumerate(start_position).ignore_errors(log_warning=True)
  dataset = dataset.batch(size, drop_remainder=True).scan(
      (tf.fill([size], tf.constant(no_locator, source.locator_dtype)),
       start - 1, tf.constant(0, tf.int64),
       tf.constant(0, tf.int64)), remember).unbatch()

  decode = _record_decoder(source, params, preprocess, image_size,
                           num_classes)

  def process(seq, errors, locator, window, raw):
    locator, record = source.split(raw)
    image, label, status = decode(locator, record, seq)
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
    empty = tf.logical_and(beat, tf.equal(seq[0], start))
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

  dataset = dataset.scan((start, tf.constant(0, tf.int64)), check)
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
