"""EfficientNet B0-B7 backbone, faithful to the reference TPU implementation.

Architecture (Tan & Le, 2019; tensorflow/tpu `models/official/efficientnet`):

* stem: 3x3 stride-2 conv with round_filters(32) filters -> BN -> swish;
* 7 stages of MBConv blocks built from the B0 table below, widths scaled by
  `round_filters` (divisor 8, never rounding down by more than 10%) and
  repeats scaled by `round_repeats` (ceil);
* MBConv: [expand 1x1 conv -> BN -> swish, only if expand_ratio != 1] ->
  depthwise kxk conv -> BN -> swish -> squeeze-excite -> project 1x1 conv ->
  BN (no activation) -> identity skip when stride is 1 and input filters ==
  output filters, with stochastic depth on the residual branch;
* squeeze-excite: spatial mean -> 1x1 conv (with bias) to
  max(1, int(block_input_filters * se_ratio)) filters -> swish -> 1x1 conv
  (with bias) back to the expanded filters -> sigmoid gate;
* head: 1x1 conv with round_filters(1280) filters -> BN -> swish.

Stochastic depth follows the reference "survival probability" semantics: the
residual branch of block `i` (0-based over all N blocks after depth scaling)
is dropped for a whole example with probability
`stochastic_depth_drop_rate * i / N` during training and scaled by
1 / keep_prob when kept; inference is the identity.

Convolution kernels use the reference initializer, a zero-mean normal (not
truncated) with stddev sqrt(2 / fan_out), fan_out = k * k * out_channels
(k * k for depthwise kernels): `VarianceScaling(2.0, 'fan_out',
'untruncated_normal')`.

Differences from Model Garden's `official.vision.modeling.backbones
.efficientnet.EfficientNet` (which this class otherwise mirrors in its output
contract):

* the normalization layer is injected (`norm_layer_factory`), so grouped
  (distributed) batch norm can be used;
* stochastic depth grows linearly with the block index instead of one rate for
  every block; squeeze-excite (0.25) and swish are the defaults;
* `conv_dtype` runs only the convolutions in another precision (the paper's
  "bfloat16 for convolutions, float32 elsewhere");
* 1x1 stride-1 convolutions are `PointwiseConv2D`, a `Conv2D` computed as a
  matrix multiply, and `depthwise_kernel_gradient='folded'` computes the
  kernel gradient of stride-1 5x5 depthwise convs as a forward depthwise conv
  (same variables and values up to rounding; both faster on CPU).

Output contract (same as Model Garden's EfficientNet, so
`official.vision.modeling.classification_model.ClassificationModel` works
unchanged): calling the model returns a dict of feature maps keyed by level
string: '2', '3', '4', '5' are the outputs of stages 2, 3, 5 and 7 (strides
4, 8, 16, 32) and '6' is the output of the head conv -> BN -> swish (stride
32, round_filters(1280) channels), which `ClassificationModel` picks as
`endpoints[max(endpoints.keys())]` and pools. Like Model Garden,
`output_specs` lists only the feature levels '2'..'5' (a decoder reading
'6' as a stride-64 level would be wrong).
"""
import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Union

import tensorflow as tf
import tf_keras

from official.modeling import hyperparams
from official.vision.modeling.backbones import factory
from official_ext.modeling.layers import depthwise_conv
from official_ext.modeling.layers import norm_layer_factory as norm_layers
from official_ext.modeling.layers import pointwise_conv
from official_ext.vision.configs import backbones as backbones_cfg

layers = tf_keras.layers

DTypeLike = Union[None, str, tf_keras.mixed_precision.Policy]


@dataclasses.dataclass(frozen=True)
class BlockArgs:
  """One stage of the B0 table (before compound scaling)."""
  repeats: int
  kernel_size: int
  strides: int
  expand_ratio: int
  in_filters: int
  out_filters: int
  is_endpoint: bool  # stage output is a Model Garden feature level


# The EfficientNet-B0 stages found by architecture search.
B0_BLOCKS = (
    BlockArgs(1, 3, 1, 1, 32, 16, False),
    BlockArgs(2, 3, 2, 6, 16, 24, True),
    BlockArgs(2, 5, 2, 6, 24, 40, True),
    BlockArgs(3, 3, 2, 6, 40, 80, False),
    BlockArgs(3, 5, 1, 6, 80, 112, True),
    BlockArgs(4, 5, 2, 6, 112, 192, False),
    BlockArgs(1, 3, 1, 6, 192, 320, True),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
# EfficientNet(depthwise_kernel_gradient=...); the config also takes 'auto'.
DEPTHWISE_KERNEL_GRADIENTS = tuple(
    c for c in backbones_cfg.DEPTHWISE_KERNEL_GRADIENTS if c != 'auto')


@dataclasses.dataclass(frozen=True)
class CompoundScaling:
  width: float
  depth: float
  resolution: int
  dropout_rate: float


# (width, depth, resolution, dropout) of the reference code.
SCALING = {
    'b0': CompoundScaling(1.0, 1.0, 224, 0.2),
    'b1': CompoundScaling(1.0, 1.1, 240, 0.2),
    'b2': CompoundScaling(1.1, 1.2, 260, 0.3),
    'b3': CompoundScaling(1.2, 1.4, 300, 0.3),
    'b4': CompoundScaling(1.4, 1.8, 380, 0.4),
    'b5': CompoundScaling(1.6, 2.2, 456, 0.4),
    'b6': CompoundScaling(1.8, 2.6, 528, 0.5),
    'b7': CompoundScaling(2.0, 3.1, 600, 0.5),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Scales `filters` by `width`, rounding to a multiple of `divisor`.

  Rounds to the nearest multiple (at least `divisor`) and adds one `divisor`
  if that would lose more than 10% of the scaled value.
  """
  scaled = filters * width
  new_filters = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if new_filters < 0.9 * scaled:
    new_filters += divisor
  return int(new_filters)


def round_repeats(repeats: int, depth: float) -> int:
  """Scales a stage's block count by `depth`, rounding up."""
  return int(math.ceil(depth * repeats))


def reference_conv_initializer() -> Dict[str, Any]:
  """Config of the reference conv initializer: N(0, sqrt(2 / fan_out))."""
  return {
      'class_name': 'VarianceScaling',
      'config': {'scale': 2.0, 'mode': 'fan_out',
                 'distribution': 'untruncated_normal'},
  }


def block_drop_rate(max_rate: float, block_index: int,
                               num_blocks: int) -> float:
  """Drop rate of block `block_index` (0-based) out of `num_blocks`."""
  return max_rate * float(block_index) / num_blocks


def _policy(dtype: DTypeLike) -> Optional[tf_keras.mixed_precision.Policy]:
  """Normalizes a dtype argument; 'bfloat16' means bf16 compute, f32 vars."""
  if dtype is None or dtype == '':
    return None
  if isinstance(dtype, tf_keras.mixed_precision.Policy):
    return dtype
  if dtype == 'bfloat16':
    dtype = 'mixed_bfloat16'
  elif dtype == 'float16':
    dtype = 'mixed_float16'
  return tf_keras.mixed_precision.Policy(dtype)


@tf_keras.utils.register_keras_serializable(package='OfficialExt')
class StochasticDepth(tf_keras.layers.Layer):
  """Drops a residual branch per example; scales kept ones by 1 / keep."""

  def __init__(self, drop_rate: float, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}')
    self.drop_rate = drop_rate

  def call(self, inputs, training=None):
    if not self.drop_rate:
      return inputs
    if training is None:
      training = tf_keras.backend.learning_phase()
    keep_prob = 1.0 - self.drop_rate

    def drop():
      shape = [tf.shape(inputs)[0]] + [1] * (inputs.shape.rank - 1)
      # floor(keep + U[0, 1)) is 1 with probability keep_prob.
      mask = tf.floor(keep_prob + tf.random.uniform(shape, dtype=inputs.dtype))
      return inputs / keep_prob * mask

    if isinstance(training, bool):
      return drop() if training else inputs
    return tf.cond(tf.cast(training, tf.bool), drop, lambda: inputs)

  def get_config(self):
    config = super().get_config()
    config['drop_rate'] = self.drop_rate
    return config


@tf_keras.utils.register_keras_serializable(package='OfficialExt')
class SqueezeExcite(tf_keras.layers.Layer):
  """Squeeze-and-excitation: swish inside, sigmoid gate on the input."""

  def __init__(self,
               reduced_filters: int,
               filters: int,
               activation: str = 'swish',
               kernel_initializer: Any = None,
               kernel_regularizer=None,
               bias_regularizer=None,
               **kwargs):
    super().__init__(**kwargs)
    self.reduced_filters = reduced_filters
    self.filters = filters
    self.activation = activation
    self.kernel_initializer = (kernel_initializer if kernel_initializer
                               is not None else reference_conv_initializer())
    self.kernel_regularizer = kernel_regularizer
    self.bias_regularizer = bias_regularizer
    common = dict(kernel_size=1, padding='same', use_bias=True,
                  kernel_regularizer=kernel_regularizer,
                  bias_regularizer=bias_regularizer,
                  dtype=self.dtype_policy)
    self._reduce = pointwise_conv.PointwiseConv2D(
        reduced_filters,
        kernel_initializer=tf_keras.initializers.get(self.kernel_initializer),
        name='reduce_conv2d', **common)
    self._expand = pointwise_conv.PointwiseConv2D(
        filters,
        kernel_initializer=tf_keras.initializers.get(self.kernel_initializer),
        name='expand_conv2d', **common)
    self._activation_fn = tf_keras.activations.get(activation)

  def call(self, inputs):
    x = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
    x = self._activation_fn(self._reduce(x))
    x = tf.sigmoid(self._expand(x))
    return x * inputs

  def get_config(self):
    config = super().get_config()
    config.update(
        reduced_filters=self.reduced_filters,
        filters=self.filters,
        activation=self.activation,
        kernel_initializer=self.kernel_initializer,
        kernel_regularizer=tf_keras.regularizers.serialize(
            self.kernel_regularizer) if self.kernel_regularizer else None,
        bias_regularizer=tf_keras.regularizers.serialize(
            self.bias_regularizer) if self.bias_regularizer else None)
    return config


@tf_keras.utils.register_keras_serializable(package='OfficialExt')
class EfficientNet(tf_keras.Model):
  """EfficientNet B0-B7 backbone with an injectable normalization layer.

  Layer names: 'stem_*', 'blocks_{i}_*' (i = 0..N-1 over all blocks),
  'head_*'; every normalization layer's name contains 'batch_normalization'
  (the LARS skip list and the weight-decay exclusion match variable names on
  it), every main-path conv is a `Conv2D` / `DepthwiseConv2D` named '*conv2d',
  and the squeeze-excite layers are 'blocks_{i}_se'.
  """

  def __init__(self,
               model_id: str = 'b0',
               input_specs: tf_keras.layers.InputSpec = layers.InputSpec(
                   shape=[None, None, None, 3]),
               se_ratio: float = 0.25,
               stochastic_depth_drop_rate: float = 0.2,
               activation: str = 'swish',
               norm_momentum: float = 0.99,
               norm_epsilon: float = 1e-3,
               norm_layer_factory: Optional[norm_layers.NormLayerFactory] = None,
               conv_dtype: DTypeLike = None,
               depthwise_kernel_gradient: str = 'native',
               kernel_initializer: Any = None,
               kernel_regularizer: Optional[
                   tf_keras.regularizers.Regularizer] = None,
               bias_regularizer: Optional[
                   tf_keras.regularizers.Regularizer] = None,
               **kwargs):
    """Builds the network.

    Args:
      model_id: 'b0' .. 'b7'.
      input_specs: spec of the NHWC input.
      se_ratio: squeeze-excite ratio of the block input filters; 0 disables.
      stochastic_depth_drop_rate: drop rate reached (exclusively) by the last
        block; block i of N uses rate * i / N. 0 disables.
      activation: activation of the main path and inside squeeze-excite.
      norm_momentum: moving-average momentum passed to the norm factory.
      norm_epsilon: epsilon passed to the norm factory.
      norm_layer_factory: called as `factory(axis=-1, momentum=...,
        epsilon=..., dtype=..., name=...)` for every normalization layer and
        must return a Keras layer (dtype is None, meaning the global policy,
        unless `conv_dtype` is set, then 'float32'). The name it receives
        contains 'batch_normalization'; the layer must keep it. Default:
        `tf_keras.layers.BatchNormalization`.
      conv_dtype: None (every layer follows the global policy) or a dtype
        policy (name) for the main-path `Conv2D` and `DepthwiseConv2D` layers
        (stem, expand, depthwise, project, head). Every other layer
        (normalization, activations, squeeze-excite including its two small
        1x1 convs, stochastic depth, residual adds) is then float32. 'bfloat16'
        is read as 'mixed_bfloat16': bfloat16 compute, float32 variables. The
        squeeze-excite convs act on a 1x1 pooled vector (negligible FLOPs) and
        produce the sigmoid gate, so they stay float32 like the paper's
        "everything but convolutions" numerics.
      depthwise_kernel_gradient: 'native' (TensorFlow's gradient of every
        depthwise conv) or 'folded' (`FoldedGradientDepthwiseConv2D`: the
        kernel gradient of the stride-1 5x5 depthwise convs as a forward
        depthwise conv, faster on CPU; same values up to float rounding).
      kernel_initializer: initializer (name or config) of every conv kernel;
        default the reference N(0, sqrt(2 / fan_out)).
      kernel_regularizer: regularizer of every conv kernel.
      bias_regularizer: regularizer of the squeeze-excite conv biases.
      **kwargs: passed to `tf_keras.Model`.
    """
    if model_id not in SCALING:
      raise ValueError(f'Unknown EfficientNet model_id {model_id!r}; '
                       f'expected one of {sorted(SCALING)}')
    if depthwise_kernel_gradient not in DEPTHWISE_KERNEL_GRADIENTS:
      raise ValueError(
          f'depthwise_kernel_gradient={depthwise_kernel_gradient!r}; use one '
          f'of {", ".join(DEPTHWISE_KERNEL_GRADIENTS)}')
    scaling = SCALING[model_id]
    conv_policy = _policy(conv_dtype)
    other_dtype = 'float32' if conv_policy is not None else None
    norm_factory = norm_layer_factory or layers.BatchNormalization
    if kernel_initializer is None:
      kernel_initializer = reference_conv_initializer()

    self._config_dict = {
        'model_id': model_id,
        'input_specs': input_specs,
        'se_ratio': se_ratio,
        'stochastic_depth_drop_rate': stochastic_depth_drop_rate,
        'activation': activation,
        'norm_momentum': norm_momentum,
        'norm_epsilon': norm_epsilon,
        'norm_layer_factory': norm_layer_factory,
        'conv_dtype': conv_policy.name if conv_policy is not None else None,
        'depthwise_kernel_gradient': depthwise_kernel_gradient,
        'kernel_initializer': kernel_initializer,
        'kernel_regularizer': kernel_regularizer,
        'bias_regularizer': bias_regularizer,
    }

    def conv(filters, kernel_size, strides, name):
      conv_class = (pointwise_conv.PointwiseConv2D
                    if kernel_size == 1 and strides == 1 else layers.Conv2D)
      return conv_class(
          filters, kernel_size, strides=strides, padding='same',
          use_bias=False,
          kernel_initializer=tf_keras.initializers.get(kernel_initializer),
          kernel_regularizer=kernel_regularizer,
          dtype=conv_policy, name=name)

    depthwise_class = {
        'native': layers.DepthwiseConv2D,
        'folded': depthwise_conv.FoldedGradientDepthwiseConv2D,
    }[depthwise_kernel_gradient]

    def depthwise(kernel_size, strides, name):
      return depthwise_class(
          kernel_size, strides=strides, padding='same', use_bias=False,
          depthwise_initializer=tf_keras.initializers.get(kernel_initializer),
          depthwise_regularizer=kernel_regularizer,
          dtype=conv_policy, name=name)

    def norm(name):
      return norm_factory(axis=-1, momentum=norm_momentum,
                          epsilon=norm_epsilon, dtype=other_dtype, name=name)

    def act(name):
      return layers.Activation(activation, dtype=other_dtype, name=name)

    # Scaled stage table.
    stages = []
    for b in B0_BLOCKS:
      stages.append(dataclasses.replace(
          b,
          repeats=round_repeats(b.repeats, scaling.depth),
          in_filters=round_filters(b.in_filters, scaling.width),
          out_filters=round_filters(b.out_filters, scaling.width)))
    num_blocks = sum(s.repeats for s in stages)

    inputs = tf_keras.Input(shape=input_specs.shape[1:], name=input_specs.name)
    x = conv(round_filters(STEM_FILTERS, scaling.width), 3, 2, 'stem_conv2d')(
        inputs)
    x = norm('stem_batch_normalization')(x)
    x = act('stem_activation')(x)

    endpoints = {}
    level = 2
    block_rates = []
    block_skips = []
    block_index = 0
    for stage in stages:
      for r in range(stage.repeats):
        in_filters = stage.in_filters if r == 0 else stage.out_filters
        strides = stage.strides if r == 0 else 1
        rate = block_drop_rate(
            stochastic_depth_drop_rate, block_index, num_blocks)
        prefix = f'blocks_{block_index}_'
        shortcut = x
        expanded = in_filters * stage.expand_ratio
        if stage.expand_ratio != 1:
          x = conv(expanded, 1, 1, prefix + 'expand_conv2d')(x)
          x = norm(prefix + 'expand_batch_normalization')(x)
          x = act(prefix + 'expand_activation')(x)
        x = depthwise(stage.kernel_size, strides,
                      prefix + 'depthwise_conv2d')(x)
        x = norm(prefix + 'depthwise_batch_normalization')(x)
        x = act(prefix + 'depthwise_activation')(x)
        if se_ratio and 0 < se_ratio <= 1:
          x = SqueezeExcite(
              max(1, int(in_filters * se_ratio)), expanded,
              activation=activation, kernel_initializer=kernel_initializer,
              kernel_regularizer=kernel_regularizer,
              bias_regularizer=bias_regularizer,
              dtype=other_dtype, name=prefix + 'se')(x)
        x = conv(stage.out_filters, 1, 1, prefix + 'project_conv2d')(x)
        x = norm(prefix + 'project_batch_normalization')(x)
        if strides == 1 and in_filters == stage.out_filters:
          if rate > 0:
            x = StochasticDepth(rate, dtype=other_dtype,
                                name=prefix + 'stochastic_depth')(x)
          x = layers.Add(dtype=other_dtype, name=prefix + 'add')([x, shortcut])
          block_skips.append(True)
        else:
          block_skips.append(False)  # no residual branch to drop
        block_rates.append(rate)
        block_index += 1
      if stage.is_endpoint:
        endpoints[str(level)] = x
        level += 1

    self._output_specs = {k: v.get_shape() for k, v in endpoints.items()}

    x = conv(round_filters(HEAD_FILTERS, scaling.width), 1, 1, 'head_conv2d')(x)
    x = norm('head_batch_normalization')(x)
    endpoints[str(level)] = act('head_activation')(x)

    super().__init__(inputs=inputs, outputs=endpoints, **kwargs)
    self._input_specs = input_specs
    self._num_blocks = num_blocks
    self._block_drop_rates = block_rates
    self._block_has_skip = block_skips
    self._scaling = scaling

  @property
  def output_specs(self) -> Mapping[str, tf.TensorShape]:
    """{level: shape} of the feature levels '2'..'5' (as Model Garden)."""
    return self._output_specs

  @property
  def num_blocks(self) -> int:
    """Number of MBConv blocks after depth scaling."""
    return self._num_blocks

  @property
  def block_drop_rates(self) -> List[float]:
    """Stochastic-depth drop rate of every block: rate * i / N.

    Applied only to blocks with an identity skip (see `block_has_skip`).
    """
    return list(self._block_drop_rates)

  @property
  def block_has_skip(self) -> List[bool]:
    """Whether each block has an identity skip (stride 1, in == out)."""
    return list(self._block_has_skip)

  @property
  def scaling(self) -> CompoundScaling:
    return self._scaling

  def get_config(self) -> Dict[str, Any]:
    return dict(self._config_dict)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


@factory.register_backbone_builder('paper_efficientnet')
def build_paper_efficientnet(
    input_specs: tf_keras.layers.InputSpec,
    backbone_config: hyperparams.Config,
    norm_activation_config: hyperparams.Config,
    l2_regularizer: Optional[tf_keras.regularizers.Regularizer] = None,
) -> tf_keras.Model:
  """Builds the paper-faithful EfficientNet from a `Backbone` config.

  Exists because Model Garden's 'efficientnet' builder cannot express the
  paper's model: it hard-wires `BatchNormalization` inside its stem, head and
  `nn_blocks.InvertedBottleneckBlock` (no grouped/distributed BN), defaults to
  se_ratio 0 with relu (taken from `norm_activation.activation`), uses one
  stochastic-depth rate for every block instead of the linear ramp, and has no
  conv-only bfloat16 mode.

  Reads `backbone_config.paper_efficientnet` (official_ext.vision.configs
  .backbones.PaperEfficientNet) and, from `norm_activation_config`, only the
  normalization settings: norm_momentum, norm_epsilon, use_sync_bn and
  bn_group_size (the activation is the backbone config's, swish by default).
  """
  backbone_type = backbone_config.type
  assert backbone_type == 'paper_efficientnet', (
      f'Inconsistent backbone type {backbone_type}')
  cfg = backbone_config.get()
  return EfficientNet(
      model_id=cfg.model_id,
      input_specs=input_specs,
      se_ratio=cfg.se_ratio,
      stochastic_depth_drop_rate=cfg.stochastic_depth_drop_rate,
      activation=cfg.activation,
      norm_momentum=norm_activation_config.norm_momentum,
      norm_epsilon=norm_activation_config.norm_epsilon,
      norm_layer_factory=norm_layers.make_norm_layer_factory(
          norm_activation_config),
      conv_dtype=cfg.conv_dtype or None,
      depthwise_kernel_gradient=depthwise_conv.resolve_kernel_gradient(
          cfg.depthwise_kernel_gradient),
      kernel_regularizer=l2_regularizer)
