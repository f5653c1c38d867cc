"""Depthwise convolution whose kernel gradient is a depthwise convolution too.

Why this layer exists: on CPU, TensorFlow's kernel for the gradient of a
depthwise convolution with respect to its filter
(`DepthwiseConv2dNativeBackpropFilter`, run by oneDNN) is the slowest op of an
EfficientNet training step, and slowest for the 5x5 kernels on small feature
maps of the later stages. That gradient is a correlation of the padded input
with the output gradient, channel by channel and summed over the batch:

    dW[i, j, c] = sum_{n, h, w} x_pad[n, s*h + i, s*w + j, c] * dy[n, h, w, c]

which is a *forward* depthwise convolution (fast on CPU) of the input, with
batch and channels folded into channels ([1, H_pad, W_pad, N*C]), by the
output gradient used as a [H_out, W_out, N*C, 1] filter dilated by the stride,
followed by a sum over the batch. `FoldedGradientDepthwiseConv2D` computes
the forward pass and the input gradient with TensorFlow's own ops and the
kernel gradient that way. Everything else is `tf_keras.layers.
DepthwiseConv2D`'s (variables, initializers, regularizers, dtype policy), so
checkpoints and skip lists are unchanged. The folded form is used for
stride-1 kernels of at least `min_folded_kernel_size` (5) pixels with 'same'
padding, depth multiplier 1, no dilation and a batch size known when the
gradient is traced, the cases where it was faster on CPU at every
EfficientNet-B0 shape tried (64 and 224 px; stride 2 was mixed); other cases
use TensorFlow's gradient (`folded_kernel_gradient` itself handles strides).
It is a CPU optimization: the backbone uses it with
`depthwise_kernel_gradient='folded'`, which the config's default 'auto' picks
only when the process sees no TPU or GPU. In bfloat16 or float16 the folded
gradient is computed in float32.
"""
import tensorflow as tf
import tf_keras

from official_ext.core import tpu_slice


def same_padding(size: int, kernel_size: int, stride: int):
  """(before, after) padding of TensorFlow's 'SAME' for one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel_size - size, 0)
  return total // 2, total - total // 2


def folded_kernel_gradient(x: tf.Tensor, dy: tf.Tensor, kernel_size: int,
                           stride: int) -> tf.Tensor:
  """d(loss)/d(kernel) of a 'SAME' depthwise conv, as a depthwise conv.

  x: [N, H, W, C] input (static shape); dy: [N, H_out, W_out, C] output
  gradient. Returns [k, k, C, 1].
  """
  out_dtype = x.dtype
  if x.dtype in (tf.bfloat16, tf.float16):
    x, dy = tf.cast(x, tf.float32), tf.cast(dy, tf.float32)
  n, height, width, channels = x.shape.as_list()
  out_h, out_w = dy.shape[1], dy.shape[2]
  padded = tf.pad(x, [[0, 0], same_padding(height, kernel_size, stride),
                      same_padding(width, kernel_size, stride), [0, 0]])
  folded_x = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]),
                        [1, padded.shape[1], padded.shape[2], n * channels])
  folded_dy = tf.reshape(tf.transpose(dy, [1, 2, 0, 3]),
                         [out_h, out_w, n * channels, 1])
  correlation = tf.nn.depthwise_conv2d(
      folded_x, folded_dy, [1, 1, 1, 1], 'VALID', dilations=[stride, stride])
  correlation = correlation[0, :kernel_size, :kernel_size, :]
  per_example = tf.reshape(correlation,
                           [kernel_size, kernel_size, n, channels])
  return tf.cast(tf.reduce_sum(per_example, axis=2)[..., tf.newaxis],
                 out_dtype)


@tf_keras.utils.register_keras_serializable(package='OfficialExt')
class FoldedGradientDepthwiseConv2D(tf_keras.layers.DepthwiseConv2D):
  """`DepthwiseConv2D` with the folded kernel gradient where it applies."""

  def __init__(self, *args, min_folded_kernel_size: int = 5, **kwargs):
    super().__init__(*args, **kwargs)
    self.min_folded_kernel_size = int(min_folded_kernel_size)

  def _folds(self, inputs) -> bool:
    return (self.kernel_size[0] == self.kernel_size[1]
            >= self.min_folded_kernel_size
            and self.strides == (1, 1)
            and self.padding == 'same' and self.depth_multiplier == 1
            and self.dilation_rate == (1, 1)
            and self.data_format == 'channels_last'
            and inputs.shape.is_fully_defined())

  def call(self, inputs):
    if not self._folds(inputs):
      return super().call(inputs)
    size = self.kernel_size[0]
    strides = [1, 1, 1, 1]

    @tf.custom_gradient
    def depthwise(x, kernel):
      def grad(dy):
        dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
            input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
            strides=strides, padding='SAME')
        return dx, folded_kernel_gradient(x, dy, size, stride=1)
      return tf.nn.depthwise_conv2d(x, kernel, strides, 'SAME'), grad

    outputs = depthwise(inputs, tf.convert_to_tensor(self.depthwise_kernel))
    if self.use_bias:
      outputs = tf.nn.bias_add(outputs, self.bias)
    if self.activation is not None:
      return self.activation(outputs)
    return outputs

  def get_config(self):
    config = super().get_config()
    config['min_folded_kernel_size'] = self.min_folded_kernel_size
    return config


def resolve_kernel_gradient(choice: str) -> str:
  """'auto' -> 'folded' when this process runs on CPU only, else 'native'.

  The folded kernel gradient is a CPU optimization; TPUs (XLA) and GPUs keep
  TensorFlow's own gradient.
  """
  if choice != 'auto':
    return choice
  on_accelerator = (
      tpu_slice.is_tpu_strategy(tf.distribute.get_strategy())
      or tf.config.list_logical_devices('TPU')
      or tf.config.list_logical_devices('GPU'))
  return 'native' if on_accelerator else 'folded'
