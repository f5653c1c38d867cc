"""Preprocessing conventions of the reference code, against NumPy.

The reference (tensorflow/tpu efficientnet `preprocessing.py`) resizes with
TF1 `resize_bicubic` (no half-pixel centers) and, when the random crop fails,
compares height, width and channels of the stored JPEG with the 3-channel
crop, so a grayscale JPEG never takes the center-crop fallback.
"""
import numpy as np
import pytest
import tensorflow as tf

from official_ext.dataloaders import classification_input as ci
from official_ext.vision.configs import image_classification as ic

LEGACY_A = -0.75  # TF1 bicubic's cubic coefficient (half-pixel uses -0.5).
TABLE_SIZE = 1024  # TF1 quantizes the fractional offset to 1/1024.


def cubic(x, a=LEGACY_A):
  x = np.abs(x)
  return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a,
                           0.0))


def legacy_weights(in_size, out_size):
  """[out, in] matrix of TF1 bicubic: sample i * in/out, edge-clamped taps."""
  matrix = np.zeros((out_size, in_size))
  scale = in_size / out_size
  for i in range(out_size):
    position = i * scale
    base = int(np.floor(position))
    delta = np.round((position - base) * TABLE_SIZE) / TABLE_SIZE
    for tap, distance in zip(range(-1, 3), (1 + delta, delta, 1 - delta,
                                            2 - delta)):
      matrix[i, min(max(base + tap, 0), in_size - 1)] += cubic(distance)
  return matrix


def numpy_legacy_resize(image, size):
  rows = legacy_weights(image.shape[0], size)
  cols = legacy_weights(image.shape[1], size)
  return np.einsum('yh,hwc,xw->yxc', rows, image.astype(np.float64), cols)


@pytest.mark.parametrize('shape,size', [((37, 53), 16), ((10, 12), 24)])
def test_default_resize_is_the_reference_tf1_bicubic(shape, size):
  image = np.random.default_rng(0).integers(0, 256, shape + (3,), np.uint8)
  expected = numpy_legacy_resize(image, size)
  resized = ci._resize(tf.constant(image), size, 'bicubic').numpy()
  np.testing.assert_allclose(resized, expected, atol=2e-3)
  # tf.image.resize's half-pixel centers are a different image.
  half_pixel = ci._resize(tf.constant(image), size, 'bicubic',
                          half_pixel_centers=True).numpy()
  assert np.abs(half_pixel - expected).max() > 5.0


def test_eval_preprocessing_equals_the_reference_on_a_png():
  params = ic.DataConfig(is_training=False, eval_crop_padding=4)
  image = np.random.default_rng(1).integers(0, 256, (30, 41, 3), np.uint8)
  png = tf.io.encode_png(image)
  out = ci.make_preprocess_fn(params, 12, is_training=False)(png).numpy()

  side = int(12 / (12 + 4) * 30)  # The padded center crop: 22 of 30 rows.
  top, left = (30 - side + 1) // 2, (41 - side + 1) // 2
  crop = image[top:top + side, left:left + side]
  expected = ((numpy_legacy_resize(crop, 12) - np.array(ci.MEAN_RGB)) /
              np.array(ci.STDDEV_RGB))
  np.testing.assert_allclose(out, expected, atol=1e-4)

  params.resize_half_pixel_centers = True
  other = ci.make_preprocess_fn(params, 12, is_training=False)(png).numpy()
  assert np.abs(other - expected).max() > 0.05


def _failed_sample_window(channels):
  # 4 x 400: no window of area >= 8% has an aspect ratio within [3/4, 4/3],
  # so sampling fails and returns the whole image.
  return ci.train_crop_window(tf.constant([4, 400, channels]), image_size=8,
                              area_range=(0.08, 1.0),
                              aspect_ratio_range=(3 / 4, 4 / 3),
                              crop_padding=2).numpy().tolist()


def test_failed_crop_of_rgb_jpeg_falls_back_to_center_crop():
  side = int(8 / (8 + 2) * 4)
  assert _failed_sample_window(3) == [(4 - side + 1) // 2,
                                     (400 - side + 1) // 2, side, side]


@pytest.mark.parametrize('channels', [1, 4])
def test_failed_crop_of_grayscale_or_cmyk_jpeg_resizes_the_whole_image(
    channels):
  assert _failed_sample_window(channels) == [0, 0, 4, 400]


def test_grayscale_jpeg_with_failed_crop_is_the_whole_image_resized():
  gray = np.tile(np.linspace(0, 255, 400, dtype=np.float32), (4, 1))
  jpeg = tf.io.encode_jpeg(tf.constant(gray[..., None].astype(np.uint8)),
                           quality=100)
  assert tf.image.extract_jpeg_shape(jpeg).numpy().tolist() == [4, 400, 1]
  params = ic.DataConfig(is_training=True, eval_crop_padding=2,
                         aug_rand_hflip=False)
  out = ci.make_preprocess_fn(params, 8, is_training=True)(jpeg).numpy()
  pixels = out * np.array(ci.STDDEV_RGB) + np.array(ci.MEAN_RGB)
  # The whole 0..255 ramp, not the center crop's narrow band around 128.
  assert pixels[..., 0].min() < 40 and pixels[..., 0].max() > 215
