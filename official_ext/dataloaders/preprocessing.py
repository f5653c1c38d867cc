"""Reference EfficientNet preprocessing: crop windows, decode-and-crop, resize,
normalization, augmenters, and the DataConfig checks of the input pipeline.
"""
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

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


# ----------------------------------------------------------------------------
# Crop windows. A window is int32 [offset_y, offset_x, height, width].
# ----------------------------------------------------------------------------


def sample_crop_window(image_shape: tf.Tensor,
                       area_range: Tuple[float, float] = (0.08, 1.0),
                       aspect_ratio_range: Tuple[float, float] = (3. / 4.,
                                                                  4. / 3.),
                       min_object_covered: float = 0.1,
                       max_attempts: int = 10,
                       seed: Optional[int] = None,
                       stateless_seed: Optional[tf.Tensor] = None
                       ) -> tf.Tensor:
  """Inception-style random crop window (`sample_distorted_bounding_box`).

  Area is a fraction of the image area, aspect ratio is width / height. When
  no window is found within `max_attempts` the whole image is returned.
  With `stateless_seed` (int64 [2]) the window is a function of that seed
  (`stateless_sample_distorted_bounding_box`), as deterministic runs need.
  """
  image_shape = tf.cast(image_shape, tf.int32)
  bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
  kwargs = dict(bounding_boxes=bbox, min_object_covered=min_object_covered,
                aspect_ratio_range=aspect_ratio_range, area_range=area_range,
                max_attempts=max_attempts,
                use_image_if_no_bounding_boxes=True)
  if stateless_seed is not None:
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape, seed=stateless_seed, **kwargs)
  else:
    if seed is not None:
      kwargs['seed'] = seed
    begin, size, _ = tf.image.sample_distorted_bounding_box(image_shape,
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
                      seed: Optional[int] = None,
                      stateless_seed: Optional[tf.Tensor] = None
                      ) -> tf.Tensor:
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
                              seed=seed, stateless_seed=stateless_seed)
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
# Preprocessing.
# ----------------------------------------------------------------------------


# TF1's resize_bicubic / resize_bilinear kernels (the compat wrappers only
# add a deprecation warning).
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
  return lambda shape, seed=None: train_crop_window(
      shape, image_size, area_range, aspect_range, crop_padding,
      stateless_seed=seed)


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

  Training with `params.deterministic` and a `params.seed`: preprocess takes
  the example's position in the stream too, and its crop and flip are a
  function of (seed, position) (stateless ops), so a resumed run that starts
  the stream at its position augments every example as an uninterrupted run
  does. Stateful augmenters (AutoAugment, RandAugment) are refused then.
  """
  dtype = _DTYPES[params.dtype]
  method = params.resize_method
  half_pixel_centers = getattr(params, 'resize_half_pixel_centers', False)
  if is_training:
    window_fn = _train_window_fn(params, image_size)
    augmenter = build_augmenter(params)
    flip = params.aug_rand_hflip
    seed = params.seed if params.deterministic else None
    if seed is not None and augmenter is not None:
      raise ValueError(
          f'deterministic training cannot use aug_type '
          f'{params.aug_type.type!r}: its random ops are stateful; use none')
  else:
    window_fn = _eval_window_fn(params, image_size)
    augmenter, flip, seed = None, False, None

  def preprocess(image_bytes, position=None):
    crop_seed = flip_seed = None
    if seed is not None:
      crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(
          tf.stack([tf.constant(seed, tf.int64),
                    tf.cast(position, tf.int64)]), 2))
    crop_fn = window_fn
    if crop_seed is not None and window_fn is not None:
      crop_fn = lambda shape: window_fn(shape, crop_seed)
    image = _resize(decode_and_crop(image_bytes, crop_fn), image_size,
                    method, half_pixel_centers)
    if flip and flip_seed is not None:
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    elif flip:
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
