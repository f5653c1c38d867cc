"""label_offset=None reads ImageNet's conventions; the pre-flight names the fit.

ImageNet TFRecords (`imagenet_to_gcs.py`, Model Garden) store 1..1000, TFDS
`imagenet2012` stores 0..999: the paper rows read both with no label flag.
"""
import pytest

from experiments import paper_table2
from official_ext.dataloaders import classification_input as ci
from official_ext.tools import make_fixture
from official_ext.vision.configs import image_classification as ic

NUM_CLASSES = 4


@pytest.fixture(scope='module', params=[0, 1], ids=['0_based', '1_based'])
def fixture(request, tmp_path_factory):
  out = tmp_path_factory.mktemp(f'labels{request.param}') / 'fixture'
  return make_fixture.make_fixture(
      str(out), num_classes=NUM_CLASSES, num_train=8, num_eval=8,
      image_size=16, label_offset=request.param, tfds=True,
      tfds_name=f'labels_fixture{request.param}')


def _tfrecords(fx, label_offset):
  return ic.DataConfig(input_path=fx.eval_pattern, is_training=False,
                       global_batch_size=4, num_examples=fx.num_eval,
                       label_offset=label_offset)


def _labels(params):
  dataset = ci.build_dataset(params, image_size=16, num_classes=NUM_CLASSES)
  return sorted(int(l) for _, labels in dataset for l in labels.numpy())


def test_paper_rows_use_the_convention_of_the_source():
  for row in paper_table2.TABLE_2:
    config = row.recipe()
    assert config.label_offset is None, row.name


def test_none_is_one_for_tfrecords_and_zero_for_tfds():
  assert ci.resolved_label_offset(ic.DataConfig(label_offset=None)) == 1
  assert ci.resolved_label_offset(
      ic.DataConfig(label_offset=None, tfds_name='imagenet2012')) == 0
  assert ci.resolved_label_offset(ic.DataConfig(label_offset=1,
                                                tfds_name='x')) == 1


def test_one_based_tfrecords_read_with_none(fixture):
  if fixture.label_offset != 1:
    pytest.skip('1-based TFRecords only')
  params = _tfrecords(fixture, None)
  ci.check_source(params, NUM_CLASSES)
  assert set(_labels(params)) == set(range(NUM_CLASSES))


def test_zero_based_tfds_read_with_none(fixture):
  if fixture.label_offset != 0:
    pytest.skip('0-based TFDS only')
  params = ic.DataConfig(
      tfds_name=fixture.tfds_name, tfds_data_dir=fixture.tfds_data_dir,
      tfds_split='validation', is_training=False, global_batch_size=4,
      num_examples=fixture.num_eval, label_offset=None)
  ci.check_source(params, NUM_CLASSES)
  assert set(_labels(params)) == set(range(NUM_CLASSES))


def test_preflight_names_the_offset_that_fits(fixture):
  wrong = 1 - fixture.label_offset
  params = _tfrecords(fixture, wrong)
  with pytest.raises(ValueError) as error:
    ci.check_source(params, NUM_CLASSES)
  message = str(error.value)
  assert f'minus label_offset {wrong} is outside [0, {NUM_CLASSES})' in message
  assert message.endswith(f'fit label_offset={fixture.label_offset}')
  assert '\n' not in message


def test_no_hint_when_no_offset_fits(fixture):
  params = _tfrecords(fixture, fixture.label_offset)
  with pytest.raises(ValueError, match='check num_classes and label_offset'):
    ci.check_source(params, NUM_CLASSES - 2)
