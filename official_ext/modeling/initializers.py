"""The reference code's initializer for the classifier's dense kernel.

The reference EfficientNet (`efficientnet_model.dense_kernel_initializer`)
draws the final dense kernel, shape [features, num_classes], from
U(-1/sqrt(num_classes), 1/sqrt(num_classes)) (+-0.0316 for 1000 classes), i.e.
VarianceScaling(scale=1/3, mode='fan_out', distribution='uniform'); its bias
starts at 0 (the Dense default). Model Garden's classification head takes its
kernel initializer by name (`task.model.kernel_initializer`), so this one is
registered with tf_keras under `DENSE_HEAD_INITIALIZER`; its default
'random_uniform' is U(-0.05, 0.05) whatever the class count.
"""
import tf_keras

DENSE_HEAD_INITIALIZER = 'official_ext>EfficientNetDenseHead'


@tf_keras.utils.register_keras_serializable(package='official_ext')
class EfficientNetDenseHead(tf_keras.initializers.VarianceScaling):
  """U(-1/sqrt(fan_out), 1/sqrt(fan_out)); fan_out = the kernel's last dim."""

  def __init__(self, seed=None):
    super().__init__(scale=1.0 / 3.0, mode='fan_out', distribution='uniform',
                     seed=seed)

  def get_config(self):
    return {'seed': self.seed}
