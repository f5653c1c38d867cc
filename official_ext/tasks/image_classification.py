"""EfficientNet image-classification task with the paper's recipe.

Extends Model Garden's ImageClassificationTask (registered for this project's
task config) with:
  - the project's input pipeline, whose eval split is padded with label -1
    examples so that every eval example counts exactly once;
  - the reference code's loss: label-smoothed cross entropy plus
    weight_decay * sum(l2_loss) over non-batch-norm variables;
  - weighted eval metrics (top-1, top-5, loss) that ignore the padding;
  - the optimizer factory that knows the paper's LARS and scaled schedules.
"""
from typing import Any, List, Optional, Tuple

import tensorflow as tf
import tf_keras

from official.core import task_factory
from official.modeling import performance
from official.vision.tasks import image_classification as mg_image_classification

from official_ext.core import divergence
from official_ext.dataloaders import classification_input
from official_ext.dataloaders import embedded_datasets
from official_ext.modeling.backbones import efficientnet  # pylint: disable=unused-import (registers paper_efficientnet)
from official_ext.modeling.optimization import factory as optimizer_factory
from official_ext.vision.configs import image_classification as exp_cfg

# Variables excluded from the L2 term, as in the reference code.
WEIGHT_DECAY_EXCLUDE = ('batch_normalization',)


def l2_weight_decay(variables) -> tf.Tensor:
  """Sum of tf.nn.l2_loss over variables not named like batch norm."""
  terms = [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables
           if not any(s in v.name for s in WEIGHT_DECAY_EXCLUDE)]
  return tf.add_n(terms) if terms else tf.constant(0.0)


@task_factory.register_task_cls(exp_cfg.ImageClassificationTask)
class ImageClassificationTask(mg_image_classification.ImageClassificationTask):
  """Image classification trained with the paper's recipe.

  `resume_step`: the training stream starts after this many global batches;
  the run driver sets it to the checkpoint's step for a deterministic resume.
  """

  resume_step: int = 0

  @classmethod
  def create_optimizer(cls, optimizer_config, runtime_config=None,
                       dp_config=None):
    if dp_config is not None:
      raise ValueError('differential privacy is not supported by this task')
    optimizer = optimizer_factory.build_optimizer(optimizer_config)
    if runtime_config and runtime_config.mixed_precision_dtype == 'float16':
      optimizer = performance.configure_optimizer(
          optimizer, use_float16=True, loss_scale=runtime_config.loss_scale)
    return optimizer

  def build_inputs(self, params: exp_cfg.DataConfig,
                   input_context: Optional[tf.distribute.InputContext] = None
                   ) -> tf.data.Dataset:
    if params.embedded_dataset:
      params = embedded_datasets.materialize(params)
    return classification_input.build_dataset(
        params, image_size=self.task_config.model.input_size[0],
        input_context=input_context,
        num_classes=self.task_config.model.num_classes,
        start_step=self.resume_step if params.is_training else 0)

  def build_metrics(self, training: bool = True) -> List[Any]:
    top_k = min(self.task_config.evaluation.top_k,
                self.task_config.model.num_classes)
    if training:
      return [tf_keras.metrics.SparseCategoricalAccuracy(name='accuracy')]
    return [
        tf_keras.metrics.SparseCategoricalAccuracy(name='top_1_accuracy'),
        tf_keras.metrics.SparseTopKCategoricalAccuracy(
            k=top_k, name=f'top_{top_k}_accuracy'),
        tf_keras.metrics.Mean(name='validation_loss'),
    ]

  def _cross_entropy(self, labels, logits) -> tf.Tensor:
    """Per-example label-smoothed cross entropy."""
    one_hot = tf.one_hot(labels, self.task_config.model.num_classes)
    return tf_keras.losses.categorical_crossentropy(
        one_hot, logits, from_logits=True,
        label_smoothing=self.task_config.losses.label_smoothing)

  def train_step(self, inputs: Tuple[Any, Any], model: tf_keras.Model,
                 optimizer: tf_keras.optimizers.Optimizer,
                 metrics: Optional[List[Any]] = None):
    images, labels = inputs
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    weight_decay = self.task_config.losses.weight_decay
    with tf.GradientTape() as tape:
      logits = tf.cast(model(images, training=True), tf.float32)
      loss = tf.reduce_mean(self._cross_entropy(labels, logits))
      if weight_decay:
        loss += weight_decay * l2_weight_decay(model.trainable_variables)
      if model.losses:
        loss += tf.add_n([tf.cast(l, tf.float32) for l in model.losses])
      # The optimizer's all-reduce sums, so scale to average over replicas.
      scaled_loss = loss / num_replicas
      if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
        scaled_loss = optimizer.get_scaled_loss(scaled_loss)
    variables = model.trainable_variables
    grads = tape.gradient(scaled_loss, variables)
    if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
      grads = optimizer.get_unscaled_gradients(grads)
    optimizer.apply_gradients(list(zip(grads, variables)))
    for metric in metrics or []:
      metric.update_state(labels, logits)
    # This replica's gradient norm, for the divergence guard.
    return {self.loss: loss,
            divergence.GRADIENT_NORM: tf.linalg.global_norm(grads)}

  def validation_step(self, inputs: Tuple[Any, Any], model: tf_keras.Model,
                      metrics: Optional[List[Any]] = None):
    """Updates weighted metrics; padding examples (label < 0) weigh 0."""
    images, labels = inputs
    weights = tf.cast(labels >= 0, tf.float32)
    labels = tf.maximum(labels, 0)
    logits = tf.cast(model(images, training=False), tf.float32)
    losses = self._cross_entropy(labels, logits)
    for metric in metrics or []:
      if metric.name == 'validation_loss':
        metric.update_state(losses, sample_weight=weights)
      else:
        metric.update_state(labels, logits, sample_weight=weights)
    return {}
