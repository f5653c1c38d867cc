"""Tests of the paper-faithful EfficientNet backbone (official_ext.modeling.backbones)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.vision.configs import common as mg_common
from official.vision.modeling import classification_model
from official.vision.modeling.backbones import factory

from official_ext.modeling.backbones import efficientnet
from official_ext.modeling.layers import norm_layer_factory
from official_ext.vision.configs import backbones as backbones_cfg
from official_ext.vision.configs import efficientnet as effnet_defaults
from official_ext.vision.configs import image_classification as ic_cfg

SIZE = 32
INPUT_SPECS = tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3])
# Trainable parameters with a 1000-way head (published: 5.3M, 9.2M, 30.4M).
PUBLISHED_PARAMS = {'b0': 5_288_548, 'b2': 9_109_994, 'b5': 30_389_784}
MAIN_CONV_TYPES = (tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D)


def classifier(backbone, num_classes=1000):
  return classification_model.ClassificationModel(
      backbone, num_classes, input_specs=INPUT_SPECS,
      dropout_rate=backbone.scaling.dropout_rate)


def num_trainable(model):
  return sum(int(v.shape.num_elements()) for v in model.trainable_variables)


def main_path_convs(backbone):
  """Conv layers of the main path (the backbone's own layers, not SE's)."""
  return [l for l in backbone.layers if isinstance(l, MAIN_CONV_TYPES)]


@pytest.fixture(scope='module')
def b0():
  return efficientnet.EfficientNet('b0', input_specs=INPUT_SPECS)


@pytest.mark.parametrize('model_id', ['b0', 'b2', 'b5'])
def test_parameter_count_matches_published(model_id, b0):
  backbone = b0 if model_id == 'b0' else efficientnet.EfficientNet(
      model_id, input_specs=INPUT_SPECS)
  count = num_trainable(classifier(backbone))
  published = PUBLISHED_PARAMS[model_id]
  assert abs(count - published) <= 0.01 * published
  assert count == published  # in fact exact


def test_scaling_and_rounding():
  assert efficientnet.round_filters(32, 1.1) == 32
  assert efficientnet.round_filters(1280, 1.1) == 1408
  assert efficientnet.round_filters(32, 1.6) == 48
  assert efficientnet.round_filters(1280, 1.6) == 2048
  assert efficientnet.round_filters(16, 1.4) == 24  # 22.4 -> 24
  assert efficientnet.round_filters(40, 1.2) == 48
  assert efficientnet.round_repeats(3, 2.2) == 7
  assert efficientnet.round_repeats(1, 1.1) == 2
  for model_id, variant in effnet_defaults.EFFICIENTNET_VARIANTS.items():
    scaling = efficientnet.SCALING[model_id]
    assert scaling.resolution == variant.image_size
    assert scaling.dropout_rate == variant.dropout_rate


def test_output_contract(b0):
  outputs = b0(tf.zeros([2, SIZE, SIZE, 3]), training=False)
  assert sorted(outputs) == ['2', '3', '4', '5', '6']
  assert sorted(b0.output_specs) == ['2', '3', '4', '5']
  for level in ['2', '3', '4', '5']:
    stride = 2 ** int(level)
    assert outputs[level].shape[1] == SIZE // stride
    assert outputs[level].shape.as_list()[1:] == (
        b0.output_specs[level].as_list()[1:])
  assert [outputs[k].shape[-1] for k in '2345'] == [24, 40, 112, 320]
  assert outputs['6'].shape.as_list() == [2, 1, 1, 1280]
  config = b0.get_config()
  assert config['model_id'] == 'b0' and config['se_ratio'] == 0.25


def test_stochastic_depth_grows_linearly(b0):
  n = b0.num_blocks
  assert n == 16
  rates = b0.block_drop_rates
  np.testing.assert_allclose(rates, 0.2 * np.arange(n) / n)
  assert rates[0] == 0 and rates[-1] == pytest.approx(0.2 * (n - 1) / n)
  # Identity skips: stride 1 and in == out filters (first block of stages
  # 2-7 and B0's single-block first and last stages have none).
  skips = b0.block_has_skip
  assert [i for i, s in enumerate(skips) if not s] == [0, 1, 3, 5, 8, 11, 15]
  sd_layers = {l.name: l for l in b0.layers
               if isinstance(l, efficientnet.StochasticDepth)}
  expected = {f'blocks_{i}_stochastic_depth': rates[i]
              for i in range(n) if skips[i] and rates[i] > 0}
  assert sorted(sd_layers) == sorted(expected)
  for name, rate in expected.items():
    assert sd_layers[name].drop_rate == pytest.approx(rate)


def test_stochastic_depth_layer_semantics():
  layer = efficientnet.StochasticDepth(0.5)
  x = tf.ones([256, 2, 2, 3])
  assert np.array_equal(layer(x, training=False).numpy(), x.numpy())
  y = layer(x, training=True).numpy()
  per_example = y.reshape(256, -1)
  # Each example is either dropped entirely or kept and scaled by 1 / keep.
  assert np.all((per_example == 0).all(1) | (per_example == 2.0).all(1))
  assert 0.3 < (per_example[:, 0] == 0).mean() < 0.7


def test_swish_and_squeeze_excite(b0):
  acts = [l for l in b0.layers if isinstance(l, tf_keras.layers.Activation)]
  assert acts and all(
      l.activation is tf_keras.activations.swish for l in acts)
  se = [l for l in b0.layers if isinstance(l, efficientnet.SqueezeExcite)]
  assert len(se) == b0.num_blocks
  # Ratio 0.25 of the block input filters: block 0 (32 in), block 1 (16 in).
  assert (se[0].reduced_filters, se[0].filters) == (8, 32)
  assert (se[1].reduced_filters, se[1].filters) == (4, 96)
  assert se[0].activation == 'swish'


def test_injected_norm_factory_builds_every_norm_layer():
  created = []

  class MarkedBN(tf_keras.layers.BatchNormalization):
    pass

  def counting_factory(**kwargs):
    assert {'axis', 'momentum', 'epsilon', 'name'} <= set(kwargs)
    assert kwargs['momentum'] == 0.9 and kwargs['epsilon'] == 1e-4
    layer = MarkedBN(**kwargs)
    created.append(layer)
    return layer

  backbone = efficientnet.EfficientNet(
      'b0', input_specs=INPUT_SPECS, norm_momentum=0.9, norm_epsilon=1e-4,
      norm_layer_factory=counting_factory)
  bn_layers = [l for l in backbone.submodules
               if isinstance(l, tf_keras.layers.BatchNormalization)]
  assert bn_layers and all(isinstance(l, MarkedBN) for l in bn_layers)
  assert len(created) == len(bn_layers)
  # stem + head + (3 per block with expansion, 2 for block 0).
  assert len(created) == 2 + 3 * backbone.num_blocks - 1
  assert all('batch_normalization' in l.name for l in created)
  for v in backbone.variables:
    if v.name.split('/')[0] in {l.name for l in created}:
      assert 'batch_normalization' in v.name


def test_conv_only_bfloat16_trains():
  backbone = efficientnet.EfficientNet(
      'b0', input_specs=INPUT_SPECS, conv_dtype='mixed_bfloat16')
  model = classifier(backbone, num_classes=10)
  convs = main_path_convs(backbone)
  assert len(convs) == 2 + 3 * backbone.num_blocks - 1
  assert all(l.compute_dtype == 'bfloat16' for l in convs)
  assert all(l.variable_dtype == 'float32' for l in convs)
  others = [l for l in backbone.submodules
            if isinstance(l, tf_keras.layers.Layer) and l not in convs
            and l is not backbone]
  for layer in others:
    assert layer.compute_dtype == 'float32', layer.name
  se_convs = [l for l in backbone.submodules
              if isinstance(l, efficientnet.SqueezeExcite)]
  assert se_convs and all(
      s._reduce.compute_dtype == 'float32' for s in se_convs)
  dense = [l for l in model.layers if isinstance(l, tf_keras.layers.Dense)]
  assert dense and all(l.compute_dtype == 'float32' for l in dense)
  assert all(v.dtype == tf.float32 for v in model.variables)

  optimizer = tf_keras.optimizers.legacy.SGD(0.01)
  images = tf.random.uniform([2, SIZE, SIZE, 3])
  labels = tf.constant([1, 7])
  loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  before = [v.numpy() for v in model.trainable_variables[:3]]
  with tf.GradientTape() as tape:
    logits = model(images, training=True)
    loss = loss_fn(labels, logits)
  grads = tape.gradient(loss, model.trainable_variables)
  optimizer.apply_gradients(zip(grads, model.trainable_variables))
  assert loss.dtype == tf.float32 and logits.dtype == tf.float32
  assert np.isfinite(loss.numpy())
  assert all(g is not None and g.dtype == tf.float32 for g in grads)
  assert any(not np.array_equal(b, v.numpy())
             for b, v in zip(before, model.trainable_variables[:3]))


def test_built_through_model_garden_factory():
  backbone_config = backbones_cfg.Backbone(
      type='paper_efficientnet',
      paper_efficientnet=backbones_cfg.PaperEfficientNet(
          model_id='b0', conv_dtype='bfloat16'))
  backbone = factory.build_backbone(
      input_specs=INPUT_SPECS, backbone_config=backbone_config,
      norm_activation_config=ic_cfg.NormActivation(norm_momentum=0.97))
  assert isinstance(backbone, efficientnet.EfficientNet)
  assert backbone.get_config()['conv_dtype'] == 'mixed_bfloat16'
  assert backbone.get_config()['norm_momentum'] == 0.97
  bn = [l for l in backbone.layers
        if isinstance(l, tf_keras.layers.BatchNormalization)]
  assert bn and all(l.momentum == 0.97 and not l.synchronized for l in bn)
  # Model Garden's own NormActivation (relu by default, no bn_group_size):
  # the activation comes from the backbone config, swish.
  assert backbones_cfg.Backbone().paper_efficientnet.activation == 'swish'
  factory_fn = norm_layer_factory.make_norm_layer_factory(
      mg_common.NormActivation(use_sync_bn=True))
  assert factory_fn(axis=-1, momentum=0.99, epsilon=1e-3,
                    name='batch_normalization').synchronized


def test_bn_group_size_selects_grouped_batch_norm():
  grouped_batch_norm = pytest.importorskip(
      'official_ext.modeling.layers.grouped_batch_norm')
  norm_factory = norm_layer_factory.make_norm_layer_factory(
      ic_cfg.NormActivation(bn_group_size=4, norm_momentum=0.9))
  layer = norm_factory(axis=-1, momentum=0.9, epsilon=1e-3, dtype=None,
                       name='blocks_0_project_batch_normalization')
  assert isinstance(layer, grouped_batch_norm.GroupedBatchNormalization)
  assert layer.name == 'blocks_0_project_batch_normalization'
  assert layer.momentum == 0.9


def test_experiment_builds_grouped_bn_under_a_strategy():
  """bn_group_size in the experiment reaches every norm layer with its groups."""
  import experiments  # pylint: disable=g-import-not-at-top,unused-import
  from official.core import task_factory  # pylint: disable=g-import-not-at-top
  from official_ext.core import config_overrides  # pylint: disable=g-import-not-at-top
  from official_ext.modeling.layers import grouped_batch_norm  # pylint: disable=g-import-not-at-top
  from tests import conftest  # pylint: disable=g-import-not-at-top
  params = config_overrides.parse_configuration(
      'effnet_b0_digits', params_override=(
          'runtime.num_cpu_replicas=4,'
          'task.model.norm_activation.bn_group_size=2'))
  with conftest.cpu_strategy(4).scope():
    model = task_factory.get_task(params.task).build_model()
  norms = [l for l in model.submodules
           if isinstance(l, tf_keras.layers.BatchNormalization)]
  assert len(norms) == 49
  for layer in norms:
    assert isinstance(layer, grouped_batch_norm.GroupedBatchNormalization)
    assert layer.group_size == 2
    assert [list(g) for g in layer.group_assignment] == [[0, 1], [2, 3]]
