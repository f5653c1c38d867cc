"""Backbone configs: Model Garden's `Backbone` oneof plus the paper EfficientNet.

Select it with `Backbone(type='paper_efficientnet', paper_efficientnet=...)`;
the builder is registered under that key by importing
`official_ext.modeling.backbones.efficientnet`.
"""
import dataclasses

from official.modeling import hyperparams
from official.vision.configs import backbones as mg_backbones

# PaperEfficientNet.depthwise_kernel_gradient ('auto' is resolved at build).
DEPTHWISE_KERNEL_GRADIENTS = ('auto', 'native', 'folded')


@dataclasses.dataclass
class PaperEfficientNet(hyperparams.Config):
  """Paper-faithful EfficientNet (official_ext.modeling.backbones.efficientnet).

  Attributes:
    model_id: 'b0' .. 'b7'.
    se_ratio: squeeze-excite ratio of the block input filters.
    stochastic_depth_drop_rate: block i of N drops its residual branch with
      probability stochastic_depth_drop_rate * i / N.
    activation: main-path and squeeze-excite activation.
    conv_dtype: '' = every layer follows the global mixed-precision policy;
      'bfloat16' / 'mixed_bfloat16' = the main-path convolutions compute in
      bfloat16 (float32 variables) and every other layer in float32, the
      paper's "bfloat16 for convolutions" mode.
    depthwise_kernel_gradient: 'native' = TensorFlow's gradient of every
      depthwise conv; 'folded' = the kernel gradient of stride-1 5x5
      depthwise convs computed as a forward depthwise conv (a CPU speed-up,
      same values up to rounding); 'auto' = 'folded' when the process sees
      no TPU or GPU.

  Batch-norm settings (momentum, epsilon, use_sync_bn, bn_group_size) come
  from the model's `norm_activation` config.
  """
  model_id: str = 'b0'
  se_ratio: float = 0.25
  stochastic_depth_drop_rate: float = 0.2
  activation: str = 'swish'
  conv_dtype: str = ''
  depthwise_kernel_gradient: str = 'auto'


@dataclasses.dataclass
class Backbone(mg_backbones.Backbone):
  """Model Garden's backbone oneof with `paper_efficientnet` added."""
  paper_efficientnet: PaperEfficientNet = dataclasses.field(
      default_factory=PaperEfficientNet)
