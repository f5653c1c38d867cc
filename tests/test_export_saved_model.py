"""export_saved_model: the SavedModel computes what the run's evaluation did.

The reference is independent of the export path: the run's own eval input
pipeline, and the weights Model Garden's EMACheckpointing action saved at the
run's last evaluation (averages swapped in), on the run's 2 replicas. The
export restores the regular checkpoint and swaps the averages itself.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from official.core import task_factory
from official_ext.dataloaders import classification_input
from official_ext.vision.serving import export_saved_model_lib as export_lib
from tests import conftest
from tests import short_runs

NUM_IMAGES = 8  # The first eval batch (global eval batch 8).


def _cli(*flags):
  env = dict(os.environ)
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  return subprocess.run(
      [sys.executable, '-m', 'official_ext.tools.export_saved_model',
       f'--experiment={short_runs.EXPERIMENT}', *flags],
      capture_output=True, text=True, timeout=600, cwd=short_runs.ROOT,
      env=env)


@pytest.fixture(scope='module')
def export(short_run, tmp_path_factory):
  export_dir = tmp_path_factory.mktemp('export') / 'saved_model'
  result = _cli(f'--model_dir={short_run.model_dir}',
                f'--export_dir={export_dir}',
                f'--params_override={short_run.model_dir}.override.yaml')
  assert result.returncode == 0, result.stderr[-3000:]
  return export_dir, result


@pytest.fixture(scope='module')
def saved_model(export):
  return tf.saved_model.load(str(export[0]))


def _eval_bytes(fixture):
  """Encoded images of the eval split in the order evaluation reads them."""
  images = []
  for path in classification_input.list_files(fixture.eval_pattern):
    for _, record in classification_input.iter_tfrecord_file(path):
      example = tf.train.Example.FromString(record)
      images.append(
          example.features.feature['image/encoded'].bytes_list.value[0])
  return images


def _run_model(short_run, checkpoint_dir):
  """The run's model (2 replicas, its params) restored from checkpoint_dir."""
  params = short_runs.resolved_params(short_run.fixture)
  with conftest.cpu_strategy(2).scope():
    task = task_factory.get_task(params.task)
    model = task.build_model()
    tf.train.Checkpoint(model=model).read(
        tf.train.latest_checkpoint(checkpoint_dir)).expect_partial(
        ).assert_existing_objects_matched()
  return params, task, model


@pytest.fixture(scope='module')
def evaluation(short_run):
  """(images, labels, logits) of the run's evaluation, every eval batch."""
  params, task, model = _run_model(
      short_run, os.path.join(short_run.model_dir, 'ema_checkpoints'))
  images, labels, logits = [], [], []
  for batch_images, batch_labels in task.build_inputs(
      params.task.validation_data):
    images.append(batch_images.numpy())
    labels.append(batch_labels.numpy())
    logits.append(model(batch_images, training=False).numpy())
  return (np.concatenate(images), np.concatenate(labels),
          np.concatenate(logits))


def test_reference_is_the_runs_evaluation(short_run, evaluation):
  _, labels, logits = evaluation
  real = labels >= 0  # The padding examples of the last batch.
  assert real.sum() == short_runs.NUM_EVAL
  top1 = np.mean(np.argmax(logits[real], axis=1) == labels[real])
  with open(os.path.join(short_run.model_dir, 'summary.json')) as f:
    assert top1 == pytest.approx(json.load(f)['evals'][-1]['top1'])


def test_serving_default_matches_evaluation_on_encoded_images(
    short_run, export, saved_model, evaluation):
  export_dir, result = export
  assert f'to {export_dir}' in result.stdout and 'EMA weights' in result.stdout
  serve = saved_model.signatures['serving_default']
  images = _eval_bytes(short_run.fixture)[:NUM_IMAGES]
  outputs = serve(encoded_images=tf.constant(images))
  logits = outputs['logits'].numpy()
  np.testing.assert_allclose(logits, evaluation[2][:NUM_IMAGES], atol=1e-5,
                             rtol=0)
  shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
  np.testing.assert_allclose(outputs['probabilities'].numpy(),
                             shifted / shifted.sum(axis=1, keepdims=True),
                             atol=1e-6)


def test_serving_preprocessed_matches_evaluation_on_its_images(
    saved_model, evaluation):
  serve = saved_model.signatures['serving_preprocessed']
  logits = serve(images=tf.constant(evaluation[0][:NUM_IMAGES]))['logits']
  np.testing.assert_allclose(logits.numpy(), evaluation[2][:NUM_IMAGES],
                             atol=1e-5, rtol=0)


def test_exported_weights_are_the_ema_not_the_trained_ones(
    short_run, evaluation):
  _, _, trained = _run_model(short_run, short_run.model_dir)
  trained_logits = trained(evaluation[0][:NUM_IMAGES], training=False)
  # 4 steps of EMA (decay (1+n)/(10+n)) leave the averages far from the
  # weights: an export of the trained weights would fail the test above.
  assert np.abs(trained_logits.numpy() -
                evaluation[2][:NUM_IMAGES]).max() > 1e-3


def test_bad_bytes_name_the_image(short_run, saved_model):
  serve = saved_model.signatures['serving_default']
  good = _eval_bytes(short_run.fixture)[0]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'image 1 of the batch \(12 bytes\) is neither a '
                     r'JPEG nor a PNG image'):
    serve(encoded_images=tf.constant([good, b'not an image']))


def test_non_empty_export_dir_is_refused_and_kept(short_run, export):
  export_dir = export[0]
  before = sorted(os.listdir(export_dir))
  result = _cli(f'--model_dir={short_run.model_dir}',
                f'--export_dir={export_dir}',
                f'--params_override={short_run.model_dir}.override.yaml')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'error: --export_dir={str(export_dir)!r} is not empty; pass a new or '
      'empty directory (an export is never overwritten)']
  assert sorted(os.listdir(export_dir)) == before


def test_params_of_another_model_are_refused(short_run):
  params = short_runs.resolved_params(
      short_run.fixture, {'task': {'model': {'num_classes': 10}}})
  with pytest.raises(export_lib.ExportError,
                     match=r'task\.model\.num_classes: 4 there, 10 now'):
    export_lib.check_matches_run(short_run.model_dir, params)


def test_a_run_without_checkpoint_is_refused(tmp_path):
  with pytest.raises(export_lib.ExportError, match='holds no checkpoint'):
    export_lib.find_checkpoint(str(tmp_path), None)
  with pytest.raises(export_lib.ExportError,
                     match='neither a checkpoint .* nor a directory'):
    export_lib.find_checkpoint(str(tmp_path), str(tmp_path / 'ckpt-9'))
