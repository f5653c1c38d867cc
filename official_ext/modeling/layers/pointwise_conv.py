"""A 1x1, stride-1 convolution computed as one matrix multiply over channels.

Why this layer exists: EfficientNet spends most of its FLOPs in 1x1
convolutions (expand, project, head, squeeze-excite). On CPU, TensorFlow
runs `Conv2D` through oneDNN's convolution kernels, whose forward and backward
passes for these shapes are much slower than the same arithmetic as one
`MatMul` over the flattened [batch * height * width, channels] activations
(`benchmarks/vs_model_garden.py` shows the effect on a whole train step).
A 1x1 stride-1 convolution *is* that matrix multiply,
so the layer computes it that way and changes nothing else: it is a
`tf_keras.layers.Conv2D` with the same kernel variable ([1, 1, in, out], so
checkpoints, initializers' fan-in, regularizers and name-based skip lists are
unchanged), bias, activation and dtype policy. XLA (TPU) lowers both forms to
the same dot.
"""
import tensorflow as tf
import tf_keras


def _as_pair(value, name):
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if pair != (1, 1):
    raise ValueError(f'PointwiseConv2D needs {name}=1, got {value!r}')


@tf_keras.utils.register_keras_serializable(package='OfficialExt')
class PointwiseConv2D(tf_keras.layers.Conv2D):
  """`Conv2D(filters, 1)` with strides 1, channels last, one group."""

  def __init__(self, filters: int, kernel_size=1, strides=1,
               dilation_rate=1, groups: int = 1, data_format=None, **kwargs):
    _as_pair(kernel_size, 'kernel_size')
    _as_pair(strides, 'strides')
    _as_pair(dilation_rate, 'dilation_rate')
    if groups != 1:
      raise ValueError(f'PointwiseConv2D needs groups=1, got {groups!r}')
    data_format = data_format or tf_keras.backend.image_data_format()
    if data_format != 'channels_last':
      raise ValueError('PointwiseConv2D needs data_format=channels_last, got '
                       f'{data_format!r}')
    super().__init__(filters, kernel_size=1, strides=1, dilation_rate=1,
                     groups=1, data_format=data_format, **kwargs)

  def convolution_op(self, inputs, kernel):
    in_channels = kernel.shape[-2]
    outputs = tf.matmul(tf.reshape(inputs, [-1, in_channels]),
                        tf.reshape(kernel, [in_channels, self.filters]))
    inner = inputs.shape[1:-1]
    if inner.is_fully_defined():
      shape = [-1] + inner.as_list() + [self.filters]
    else:
      shape = tf.concat([tf.shape(inputs)[:-1], [self.filters]], axis=0)
    return tf.reshape(outputs, shape)
