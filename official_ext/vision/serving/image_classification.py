"""Serving signatures for the image classifier, with this project's eval input.

`ClassificationModule` is a Model Garden vision `ExportModule`
(official/vision/serving/export_base.py) whose preprocessing is this
project's evaluation pipeline (`classification_input.make_preprocess_fn(...,
is_training=False)`: padded center crop, TF1 bicubic resize, normalization),
not Model Garden's (`ClassificationModule` there resizes bilinearly and
rounds to uint8). Signatures, by Model Garden function key:

  'image_bytes'          a batch of encoded JPEG or PNG images (tf.string
                         [batch]); each is preprocessed as evaluation does
  'preprocessed_images'  float32 [batch, size, size, 3], already
                         preprocessed (e.g. by the training input pipeline)

Both return {'logits': float32 [batch, classes], 'probabilities': their
softmax}. Bytes that are neither JPEG nor PNG fail the call with an
InvalidArgumentError naming the image's index in the batch.

`restore_evaluated_weights` loads the weights the run's evaluation used: a
trainer checkpoint's model, with the EMA averages swapped in when the run
trained with an EMA optimizer (as Model Garden's `Trainer.eval_begin` does).
"""
from typing import Dict, Optional, Text

import tensorflow as tf
import tf_keras

from official.core import task_factory
from official.modeling import optimization
from official.vision.serving import export_base

from official_ext import tasks  # pylint: disable=unused-import (registers the task)
from official_ext.dataloaders import classification_input

IMAGE_BYTES = 'image_bytes'
PREPROCESSED_IMAGES = 'preprocessed_images'
# Model Garden function key -> signature name in the SavedModel.
SIGNATURES = {IMAGE_BYTES: tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY,
              PREPROCESSED_IMAGES: 'serving_preprocessed'}

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def local_batch_norm_params(params):
  """`params` with per-replica batch norm, unlocked.

  Inference normalizes with the moving statistics only, so grouped or
  synchronized batch norm computes what plain batch norm does (and holds the
  same variables); a serving host has no replica groups to form.
  """
  return params.replace(task={'model': {'norm_activation': {
      'bn_group_rule': 'fixed', 'bn_group_size': 1, 'bn_batch_size': 0,
      'use_sync_bn': False}}})


def restore_evaluated_weights(params, checkpoint_path: str
                              ) -> tf_keras.Model:
  """The task's model holding the weights evaluation used at the checkpoint.

  `params` must build the model the checkpoint was trained with (see
  `local_batch_norm_params`). Raises ValueError when the checkpoint does not
  hold that model.
  """
  # Model Garden's EMA swap runs under a strategy only; one device is the
  # export host's.
  with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
    task = task_factory.get_task(params.task)
    model = task.build_model()
    optimizer = task.create_optimizer(params.trainer.optimizer_config,
                                      params.runtime)
    ema = isinstance(optimizer, optimization.ExponentialMovingAverage)
    if ema:
      optimizer.shadow_copy(model)  # The 'average' slots, as the trainer's.
    # The trainer's checkpoint layout (base_trainer.Trainer.checkpoint).
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    status = checkpoint.read(checkpoint_path).expect_partial()
    try:
      status.assert_existing_objects_matched()
    except AssertionError as e:
      raise ValueError(
          f'checkpoint {checkpoint_path} does not hold this model: '
          f'{str(e).splitlines()[0]}') from None
    if ema:
      # Model Garden's swap, as Trainer.eval_begin: the very values the
      # evaluation computes with.
      optimizer.swap_weights()
  return model


class ClassificationModule(export_base.ExportModule):
  """Model Garden's vision ExportModule with this project's eval input."""

  def __init__(self, params, *, model: tf_keras.Model,
               batch_size: Optional[int] = None):
    image_size = list(params.task.model.input_size[:2])
    data = params.task.validation_data
    self._preprocess = classification_input.make_preprocess_fn(
        data, image_size[0], is_training=False)
    self._image_dtype = tf.dtypes.as_dtype(data.dtype)
    super().__init__(params, batch_size=batch_size,
                     input_image_size=image_size, input_type=IMAGE_BYTES,
                     model=model)

  def serve(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Preprocessed images [batch, size, size, 3] -> logits, probabilities."""
    images = tf.cast(images, self._image_dtype)
    logits = tf.cast(self.model(images, training=False), tf.float32)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits)}

  def _preprocess_one(self, index_and_bytes):
    index, image_bytes = index_and_bytes
    known = tf.logical_or(
        tf.io.is_jpeg(image_bytes),
        tf.equal(tf.strings.substr(image_bytes, 0, len(_PNG_SIGNATURE)),
                 _PNG_SIGNATURE))
    check = tf.debugging.Assert(known, [tf.strings.format(
        'image {} of the batch ({} bytes) is neither a JPEG nor a PNG image',
        (index, tf.strings.length(image_bytes)))])
    with tf.control_dependencies([check]):
      return self._preprocess(tf.identity(image_bytes))

  @tf.function
  def inference_from_image_bytes(self, inputs: tf.Tensor):
    size = self._input_image_size
    with tf.device('cpu:0'):
      images = tf.map_fn(
          self._preprocess_one,
          (tf.range(tf.shape(inputs)[0]), inputs),
          fn_output_signature=tf.TensorSpec(size + [3], self._image_dtype),
          parallel_iterations=32)
    return self.serve(images)

  @tf.function
  def inference_from_preprocessed_images(self, inputs: tf.Tensor):
    return self.serve(inputs)

  def get_inference_signatures(self, function_keys: Dict[Text, Text]):
    signatures = {}
    for key, name in function_keys.items():
      if key == PREPROCESSED_IMAGES:
        spec = tf.TensorSpec([self._batch_size] + self._input_image_size + [3],
                             tf.float32, name='images')
        signatures[name] = (
            self.inference_from_preprocessed_images.get_concrete_function(
                spec))
      elif key == IMAGE_BYTES:
        spec = tf.TensorSpec([self._batch_size], tf.string,
                             name='encoded_images')
        signatures[name] = self.inference_from_image_bytes.get_concrete_function(
            spec)
      else:
        signatures.update(super().get_inference_signatures({key: name}))
    return signatures
