"""FoldedGradientDepthwiseConv2D: the kernel gradient as a depthwise conv."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import experiments  # pylint: disable=unused-import  (registers experiments)
from official_ext.core import config_overrides
from official_ext.core import recipe
from official_ext.modeling.backbones import efficientnet
from official_ext.modeling.layers import depthwise_conv

from tests import conftest


def numpy_kernel_gradient(x, dy, k, stride):
  """dW[i, j, c] = sum_{n,h,w} x_pad[n, s*h + i, s*w + j, c] dy[n, h, w, c]."""
  pads = [depthwise_conv.same_padding(size, k, stride)
          for size in x.shape[1:3]]
  x_pad = np.pad(x.astype(np.float64), [(0, 0), pads[0], pads[1], (0, 0)])
  grad = np.zeros([k, k, x.shape[-1]])
  for i in range(k):
    for j in range(k):
      for h in range(dy.shape[1]):
        for w in range(dy.shape[2]):
          grad[i, j] += np.sum(x_pad[:, stride * h + i, stride * w + j]
                               * dy[:, h, w], axis=0)
  return grad[..., np.newaxis]


@pytest.mark.parametrize('size, k, stride', [
    (8, 5, 1), (7, 5, 2), (4, 5, 1), (2, 5, 1), (1, 5, 1), (4, 5, 2),
    (6, 3, 1), (9, 3, 2)])
def test_folded_kernel_gradient_matches_numpy_and_tensorflow(size, k, stride):
  rng = np.random.default_rng(size * 10 + k + stride)
  x = rng.normal(size=[3, size, size + 1, 4]).astype(np.float32)
  out = [-(-s // stride) for s in x.shape[1:3]]
  dy = rng.normal(size=[3, out[0], out[1], 4]).astype(np.float32)
  got = depthwise_conv.folded_kernel_gradient(
      tf.constant(x), tf.constant(dy), k, stride).numpy()
  np.testing.assert_allclose(got, numpy_kernel_gradient(x, dy, k, stride),
                             rtol=1e-5, atol=1e-5)
  native = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
      input=x, filter_sizes=[k, k, 4, 1], out_backprop=dy,
      strides=[1, stride, stride, 1], padding='SAME')
  np.testing.assert_allclose(got, native.numpy(), rtol=1e-5, atol=1e-5)


def gradients(layer, x, upstream):
  xt = tf.constant(x)

  @tf.function
  def run():
    with tf.GradientTape() as tape:
      tape.watch(xt)
      y = layer(xt)
      objective = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    dx, dkernel = tape.gradient(objective, [xt, layer.depthwise_kernel])
    return y, dx, dkernel
  return run


@pytest.mark.parametrize('k, stride', [(5, 1), (7, 1), (5, 2), (3, 1)])
def test_layer_matches_stock_depthwise_conv(k, stride):
  rng = np.random.default_rng(k + stride)
  x = rng.normal(size=[2, 6, 6, 5]).astype(np.float32)
  ours = depthwise_conv.FoldedGradientDepthwiseConv2D(
      k, strides=stride, padding='same', use_bias=False)
  stock = tf_keras.layers.DepthwiseConv2D(k, strides=stride, padding='same',
                                          use_bias=False)
  ours.build(x.shape)
  stock.build(x.shape)
  stock.set_weights(ours.get_weights())
  out = -(-6 // stride)
  upstream = rng.normal(size=[2, out, out, 5]).astype(np.float32)
  ours_step, stock_step = gradients(ours, x, upstream), gradients(
      stock, x, upstream)
  for got, want in zip(ours_step(), stock_step()):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5,
                               atol=1e-5)
  # The folded path replaces TensorFlow's kernel-gradient op for stride-1
  # kernels of 5 or more only.
  op_types = {op.type for op in
              ours_step.get_concrete_function().graph.get_operations()}
  folds = k >= 5 and stride == 1
  assert ('DepthwiseConv2dNativeBackpropFilter' in op_types) == (not folds)


def test_unknown_batch_uses_tensorflows_gradient():
  layer = depthwise_conv.FoldedGradientDepthwiseConv2D(5, padding='same')
  inputs = tf_keras.Input([6, 6, 3])  # batch None: cannot fold
  model = tf_keras.Model(inputs, layer(inputs))
  x = tf.random.normal([2, 6, 6, 3], seed=0)
  with tf.GradientTape() as tape:
    y = model(x)
  assert tape.gradient(y, layer.depthwise_kernel).shape == (5, 5, 3, 1)


def test_bfloat16_gradient_close_to_float32():
  rng = np.random.default_rng(3)
  x = rng.normal(size=[2, 4, 4, 8]).astype(np.float32)
  upstream = rng.normal(size=[2, 4, 4, 8]).astype(np.float32)
  fp32 = depthwise_conv.FoldedGradientDepthwiseConv2D(5, padding='same')
  bf16 = depthwise_conv.FoldedGradientDepthwiseConv2D(
      5, padding='same', dtype=tf_keras.mixed_precision.Policy(
          'mixed_bfloat16'))
  fp32.build(x.shape)
  bf16.build(x.shape)
  bf16.set_weights(fp32.get_weights())
  _, _, want = gradients(fp32, x, upstream)()
  y, _, got = gradients(bf16, x, upstream)()
  assert y.dtype == tf.bfloat16 and got.dtype == tf.float32
  np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0.05,
                             atol=0.05 * float(tf.reduce_max(tf.abs(want))))


def test_config_round_trip():
  layer = depthwise_conv.FoldedGradientDepthwiseConv2D(
      5, padding='same', min_folded_kernel_size=7)
  clone = depthwise_conv.FoldedGradientDepthwiseConv2D.from_config(
      layer.get_config())
  assert clone.min_folded_kernel_size == 7 and clone.kernel_size == (5, 5)


def depthwise_layers(backbone):
  return [l for l in backbone.layers
          if isinstance(l, tf_keras.layers.DepthwiseConv2D)]


@pytest.mark.parametrize('choice, folded', [('native', False),
                                            ('folded', True)])
def test_backbone_choice(choice, folded):
  backbone = efficientnet.EfficientNet(
      'b0', input_specs=tf_keras.layers.InputSpec(shape=[None, 32, 32, 3]),
      depthwise_kernel_gradient=choice)
  kinds = {isinstance(l, depthwise_conv.FoldedGradientDepthwiseConv2D)
           for l in depthwise_layers(backbone)}
  assert kinds == {folded} and len(depthwise_layers(backbone)) == 16
  assert backbone.get_config()['depthwise_kernel_gradient'] == choice


def test_auto_is_folded_on_a_cpu_only_host():
  assert depthwise_conv.resolve_kernel_gradient('auto') == 'folded'
  with conftest.cpu_strategy(2).scope():  # CPUs only: still folded
    assert depthwise_conv.resolve_kernel_gradient('auto') == 'folded'
  assert depthwise_conv.resolve_kernel_gradient('native') == 'native'


def test_bad_choice_is_an_error_naming_it():
  with pytest.raises(ValueError, match="depthwise_kernel_gradient='fast'; "
                     'use one of native, folded'):
    efficientnet.EfficientNet('b0', depthwise_kernel_gradient='fast')
  params = config_overrides.parse_configuration('effnet_b0_digits',
                                                lock=False)
  params.task.model.backbone.paper_efficientnet.depthwise_kernel_gradient = (
      'fast')
  with pytest.raises(ValueError, match=r"paper_efficientnet\."
                     r"depthwise_kernel_gradient='fast'; use one of auto, "
                     'native, folded'):
    recipe.resolve(params)
