"""PointwiseConv2D: a 1x1 stride-1 Conv2D computed as a matmul."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official_ext.modeling.backbones import efficientnet
from official_ext.modeling.layers import pointwise_conv


def numpy_pointwise(x, kernel, bias):
  return np.einsum('nhwc,cd->nhwd', x.astype(np.float64),
                   kernel[0, 0].astype(np.float64)) + bias


def layer_pair(filters=6, **kwargs):
  ours = pointwise_conv.PointwiseConv2D(filters, name='conv2d_a', **kwargs)
  stock = tf_keras.layers.Conv2D(filters, 1, padding='same', name='conv2d_b',
                                 **kwargs)
  return ours, stock


def test_output_and_gradients_match_numpy_and_conv2d():
  rng = np.random.default_rng(0)
  x = rng.normal(size=[3, 5, 4, 7]).astype(np.float32)
  ours, stock = layer_pair(use_bias=True,
                           bias_initializer=tf_keras.initializers.RandomNormal(
                               seed=1))
  ours.build(x.shape)
  stock.build(x.shape)
  stock.set_weights(ours.get_weights())
  kernel, bias = ours.get_weights()
  upstream = rng.normal(size=[3, 5, 4, 6]).astype(np.float32)

  def forward_and_grads(layer):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
      tape.watch(xt)
      y = layer(xt)
      objective = tf.reduce_sum(y * upstream)
    return (y.numpy(),) + tuple(
        g.numpy() for g in tape.gradient(objective, [xt, layer.kernel,
                                                     layer.bias]))

  y, dx, dkernel, dbias = forward_and_grads(ours)
  np.testing.assert_allclose(y, numpy_pointwise(x, kernel, bias), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(
      dx, np.einsum('nhwd,cd->nhwc', upstream, kernel[0, 0]), rtol=1e-5,
      atol=1e-5)
  np.testing.assert_allclose(
      dkernel[0, 0], np.einsum('nhwc,nhwd->cd', x, upstream), rtol=1e-4,
      atol=1e-4)
  np.testing.assert_allclose(dbias, upstream.sum((0, 1, 2)), rtol=1e-5,
                             atol=1e-4)
  for got, want in zip((y, dx, dkernel, dbias), forward_and_grads(stock)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_same_variables_as_conv2d_and_checkpoint_compatible(tmp_path):
  ours, stock = layer_pair(use_bias=False)
  ours.build([None, 4, 4, 3])
  stock.build([None, 4, 4, 3])
  assert [(v.name.split('/')[-1], v.shape) for v in ours.weights] == [
      ('kernel:0', (1, 1, 3, 6))]
  assert [v.shape for v in ours.weights] == [v.shape for v in stock.weights]
  path = tf.train.Checkpoint(layer=ours).write(str(tmp_path / 'ckpt'))
  tf.train.Checkpoint(layer=stock).read(path).assert_consumed()
  np.testing.assert_array_equal(stock.kernel.numpy(), ours.kernel.numpy())


def test_unknown_spatial_size_and_activation():
  layer = pointwise_conv.PointwiseConv2D(4, activation='relu')
  inputs = tf_keras.Input([None, None, 3])
  model = tf_keras.Model(inputs, layer(inputs))
  assert model.output_shape == (None, None, None, 4)
  out = model(tf.random.normal([2, 3, 5, 3], seed=0))
  assert out.shape == (2, 3, 5, 4)
  assert float(tf.reduce_min(out)) >= 0.0


def test_mixed_bfloat16_computes_in_bfloat16_with_float32_kernel():
  layer = pointwise_conv.PointwiseConv2D(
      4, dtype=tf_keras.mixed_precision.Policy('mixed_bfloat16'))
  out = layer(tf.ones([1, 2, 2, 3]))
  assert out.dtype == tf.bfloat16
  assert layer.kernel.dtype == tf.float32


def test_graph_is_a_matmul_not_a_convolution():
  layer = pointwise_conv.PointwiseConv2D(4)
  fn = tf.function(layer).get_concrete_function(
      tf.TensorSpec([2, 3, 3, 5], tf.float32))
  op_types = {op.type for op in fn.graph.get_operations()}
  assert 'MatMul' in op_types
  assert not op_types & {'Conv2D', 'Conv', 'DepthwiseConv2dNative'}


def test_config_round_trip():
  layer = pointwise_conv.PointwiseConv2D(5, use_bias=False, name='p')
  clone = pointwise_conv.PointwiseConv2D.from_config(layer.get_config())
  assert (clone.filters, clone.use_bias, clone.kernel_size, clone.strides) == (
      5, False, (1, 1), (1, 1))
  revived = tf_keras.layers.deserialize(
      tf_keras.layers.serialize(layer),
      custom_objects={'PointwiseConv2D': pointwise_conv.PointwiseConv2D})
  assert isinstance(revived, pointwise_conv.PointwiseConv2D)


@pytest.mark.parametrize('kwargs, bad', [
    ({'kernel_size': 3}, 'kernel_size=1, got 3'),
    ({'strides': (2, 2)}, 'strides=1, got (2, 2)'),
    ({'dilation_rate': 2}, 'dilation_rate=1, got 2'),
    ({'groups': 2}, 'groups=1, got 2'),
    ({'data_format': 'channels_first'}, "channels_last, got 'channels_first'"),
])
def test_rejects_what_is_not_a_pointwise_conv(kwargs, bad):
  with pytest.raises(ValueError, match=bad.replace('(', r'\(').replace(
      ')', r'\)')):
    pointwise_conv.PointwiseConv2D(4, **kwargs)


def test_backbone_uses_it_for_every_1x1_stride_1_conv():
  backbone = efficientnet.EfficientNet(
      'b0', input_specs=tf_keras.layers.InputSpec(shape=[None, 32, 32, 3]))
  convs = [l for l in backbone.layers
           if isinstance(l, tf_keras.layers.Conv2D)
           and not isinstance(l, tf_keras.layers.DepthwiseConv2D)]
  pointwise = [l for l in convs
               if isinstance(l, pointwise_conv.PointwiseConv2D)]
  # Everything but the 3x3 stride-2 stem: 15 expand, 16 project, the head.
  assert [l.name for l in convs if l not in pointwise] == ['stem_conv2d']
  assert len(pointwise) == 15 + 16 + 1
  se = [l for l in backbone.layers if isinstance(l, efficientnet.SqueezeExcite)]
  assert len(se) == 16
  assert all(isinstance(conv, pointwise_conv.PointwiseConv2D)
             for layer in se for conv in (layer._reduce, layer._expand))  # pylint: disable=protected-access
