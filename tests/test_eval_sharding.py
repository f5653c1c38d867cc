"""Per-host evaluation reads: P pipelines together yield every eval example
exactly once, all run the same number of steps, and when there are at least
as many files as pipelines pipeline i reads only its own files.

The fixture's 103 eval examples have 103 classes, one example each, so a
label names its example: "every real label exactly once" is "every example
exactly once".
"""
import collections
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from official_ext.dataloaders import classification_input as ci
from official_ext.tools import make_fixture
from official_ext.vision.configs import image_classification as ic

NUM_EVAL = 103
EVAL_FILES = 8
TFDS_FILES = 5
IMAGE_SIZE = 8

# (pipelines, replicas, global eval batch, whether pipelines read only their
# own files). Replicas are a multiple of pipelines (one host, several cores).
# The `False` row with 3 pipelines: 8 files give 3/3/2 files (39 records),
# more than the 36 examples of its 3 steps.
CASES = [
    (1, 4, 8, False),
    (2, 4, 24, True),
    (3, 3, 48, True),
    (3, 6, 36, False),
    (4, 4, 16, True),
    (8, 16, 2048, True),
]


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  """103 single-example classes in 8 eval TFRecord files (13 or 12 each),
  and the same examples as a TFDS build with 5 validation files."""
  out = tmp_path_factory.mktemp('eval_sharding')
  fx = make_fixture.make_fixture(
      str(out / 'fixture'), num_classes=NUM_EVAL, num_train=1,
      num_eval=NUM_EVAL, image_size=IMAGE_SIZE, num_shards=1,
      eval_shards=EVAL_FILES, seed=5)
  tfds_dir = str(out / 'tfds')
  make_fixture.write_tfds_build({'validation': fx.eval_pattern}, tfds_dir,
                                'eval_sharding_fixture', NUM_EVAL,
                                num_shards=TFDS_FILES)
  return fx, tfds_dir


def _labels_of_file(path, key):
  """Stored labels of a TFRecord file, in order (NumPy, no pipeline)."""
  labels = []
  for _, record in ci.iter_tfrecord_file(path):
    example = tf.train.Example.FromString(record)
    labels.append(example.features.feature[key].int64_list.value[0])
  return labels


def _tfrecord_params(fx, batch):
  return ic.DataConfig(input_path=fx.eval_pattern, is_training=False,
                       global_batch_size=batch, num_examples=NUM_EVAL,
                       label_offset=fx.label_offset)


def _tfds_params(tfds_dir, batch):
  return ic.DataConfig(tfds_name='eval_sharding_fixture',
                       tfds_data_dir=tfds_dir, tfds_split='validation',
                       is_training=False, global_batch_size=batch,
                       num_examples=NUM_EVAL)


def _build(params, pipelines, pipeline, replicas):
  context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                       input_pipeline_id=pipeline,
                                       num_replicas_in_sync=replicas)
  return ci.build_dataset(params, image_size=IMAGE_SIZE,
                          input_context=context, num_classes=NUM_EVAL)


def _batch_labels(dataset):
  return [y.numpy().tolist() for _, y in dataset]


def _check_exactly_once(per_pipeline, expected_labels, batch, pipelines,
                        replicas):
  """Every pipeline runs ceil(N / batch) steps of full per-replica batches;
  the real labels of all pipelines are the eval labels, each once."""
  steps = -(-NUM_EVAL // batch)
  per_replica = batch // replicas
  for batches in per_pipeline:
    assert len(batches) == steps * (replicas // pipelines)
    assert all(len(b) == per_replica for b in batches)
  labels = [l for batches in per_pipeline for b in batches for l in b]
  real = collections.Counter(l for l in labels if l != ci.PADDING_LABEL)
  assert real == collections.Counter(expected_labels.tolist())
  assert labels.count(ci.PADDING_LABEL) == steps * batch - NUM_EVAL


@pytest.mark.parametrize('pipelines,replicas,batch,own_files', CASES)
def test_tfrecord_pipelines_yield_every_example_once(fixture, pipelines,
                                                     replicas, batch,
                                                     own_files):
  fx, _ = fixture
  params = _tfrecord_params(fx, batch)
  files = ci.list_files(fx.eval_pattern)
  file_labels = [np.array(_labels_of_file(f, params.label_field_key)) -
                 fx.label_offset for f in files]
  expected = np.concatenate(file_labels)
  assert np.array_equal(np.sort(expected), np.arange(NUM_EVAL))
  per_pipeline = [_batch_labels(_build(params, pipelines, i, replicas))
                  for i in range(pipelines)]
  _check_exactly_once(per_pipeline, expected, batch, pipelines, replicas)

  assert ci.eval_reads_own_files(ci.file_record_counts(files), NUM_EVAL,
                                 batch, pipelines) == own_files
  for i, batches in enumerate(per_pipeline):
    real = [l for b in batches for l in b if l != ci.PADDING_LABEL]
    if own_files:
      mine = ci.pipeline_files(len(files), pipelines, i)
      assert ci.eval_files(params, pipelines, i) == [files[j] for j in mine]
      # Exactly its own files' records, in file order.
      assert real == np.concatenate([file_labels[j] for j in mine]).tolist()
    else:
      assert ci.eval_files(params, pipelines, i) == files
      assert real == expected[i::pipelines].tolist()


@pytest.mark.parametrize('pipelines,replicas,batch', [(2, 2, 8), (3, 3, 48)])
def test_tfrecord_pipeline_opens_only_its_own_files(fixture, tmp_path,
                                                    pipelines, replicas,
                                                    batch):
  """With every other pipeline's files moved away after the dataset is built
  (record counts are cached), pipeline i still yields all its batches."""
  fx, _ = fixture
  params = _tfrecord_params(fx, batch)
  files = ci.list_files(fx.eval_pattern)
  aside = tmp_path / 'aside'
  aside.mkdir()
  for i in range(pipelines):
    dataset = _build(params, pipelines, i, replicas)
    others = [f for j, f in enumerate(files)
              if j not in ci.pipeline_files(len(files), pipelines, i)]
    for f in others:
      shutil.move(f, str(aside / os.path.basename(f)))
    try:
      batches = _batch_labels(dataset)
    finally:
      for f in others:
        shutil.move(str(aside / os.path.basename(f)), f)
    assert len(batches) == -(-NUM_EVAL // batch) * (replicas // pipelines)


def test_uneven_files_fall_back_to_record_sharding():
  # One pipeline's files hold 100 of 103 records: more than its 56-example
  # share of 1 step of 112, so records are sharded instead.
  assert not ci.eval_reads_own_files([100, 1, 1, 1], 103, 112, 2)
  assert ci.eval_reads_own_files([52, 50, 1, 0], 103, 112, 2)
  assert not ci.eval_reads_own_files([26, 26, 26], 78, 32, 4)


@pytest.mark.parametrize('pipelines,replicas,batch,own_files', [
    (1, 2, 8, False), (2, 2, 8, False), (2, 2, 128, True), (4, 4, 256, True)])
def test_tfds_pipelines_yield_every_example_once(fixture, pipelines, replicas,
                                                 batch, own_files):
  fx, tfds_dir = fixture
  params = _tfds_params(tfds_dir, batch)
  source = ci._make_source(params)  # pylint: disable=protected-access
  names = source.file_names()
  assert len(names) == TFDS_FILES
  # Per-file counts come from metadata and match the files.
  file_labels = [_labels_of_file(f, 'label') for f in names]
  assert source.record_counts() == [len(l) for l in file_labels]
  expected = np.concatenate(file_labels)
  per_pipeline = [_batch_labels(_build(params, pipelines, i, replicas))
                  for i in range(pipelines)]
  _check_exactly_once(per_pipeline, expected, batch, pipelines, replicas)
  assert ci.eval_reads_own_files(source.record_counts(), NUM_EVAL, batch,
                                 pipelines) == own_files
  for i, batches in enumerate(per_pipeline):
    real = [l for b in batches for l in b if l != ci.PADDING_LABEL]
    if own_files:
      mine = ci.pipeline_files(len(names), pipelines, i)
      assert ci.eval_files(params, pipelines, i) == [names[j] for j in mine]
      assert real == [l for j in mine for l in file_labels[j]]
    else:
      assert real == expected[i::pipelines].tolist()
