"""Every registered experiment resolves, validates and builds."""
import pytest
import tf_keras

import experiments
from experiments import paper_table2
from experiments import table2_digits
from official.core import exp_factory
from official.core import task_factory
from official.modeling.optimization import lamb
from official_ext.modeling.optimization import ema
from official_ext.modeling.optimization import lars
from official_ext.modeling.optimization import rmsprop
from official_ext.modeling.optimization import sm3


def test_table2_names_and_count():
  assert [r.name for r in paper_table2.TABLE_2] == [
      'effnet_b2_rmsprop_4k', 'effnet_b2_rmsprop_8k', 'effnet_b2_rmsprop_16k',
      'effnet_b2_lars_16k', 'effnet_b2_lars_32k', 'effnet_b5_rmsprop_4k',
      'effnet_b5_rmsprop_8k', 'effnet_b5_rmsprop_16k', 'effnet_b5_lars_16k',
      'effnet_b5_lars_32k', 'effnet_b5_lars_65k']
  digits_cells = len(table2_digits.OPTIMIZERS) * len(table2_digits.BATCHES)
  assert len(experiments.EXPERIMENT_NAMES) == 12 + digits_cells


# The Table 2 miniature's cells differ only in batch per optimizer (checked
# in test_study.py): one cell per optimizer is built here.
BUILT = [n for n in experiments.EXPERIMENT_NAMES
         if not n.startswith('table2_digits_') or n.endswith(
             f'_b{table2_digits.BATCHES[-1]}')]


@pytest.mark.parametrize('row', paper_table2.TABLE_2, ids=lambda r: r.name)
def test_row_fields(row):
  params = exp_factory.get_exp_config(row.name)
  params.validate()
  model = params.task.model
  sizes = {'b2': (260, 0.3), 'b5': (456, 0.4)}
  assert model.backbone.get().model_id == row.model_id
  assert (model.input_size[0], model.dropout_rate) == sizes[row.model_id]
  assert params.task.train_data.global_batch_size == row.global_batch_size
  assert params.task.train_data.num_examples == 1281167
  assert params.task.validation_data.num_examples == 50000
  assert params.trainer.train_epochs == 350
  assert params.runtime.tpu_cores == row.tpu_cores
  opt = params.trainer.optimizer_config
  lr = opt.learning_rate.get()
  assert lr.lr_per_256 == row.lr_per_256
  assert lr.warmup_epochs == row.warmup_epochs
  assert opt.ema.average_decay == 0.9999
  assert params.task.losses.label_smoothing == 0.1
  assert params.task.losses.weight_decay == 1e-5
  if row.optimizer == 'lars':
    assert opt.optimizer.type == 'paper_lars'
    assert opt.learning_rate.type == 'scaled_polynomial'
    assert (opt.optimizer.paper_lars.momentum, opt.optimizer.paper_lars.eeta,
            opt.optimizer.paper_lars.weight_decay) == (0.9, 0.001, 1e-5)
  else:
    rms = opt.optimizer.paper_rmsprop
    assert opt.optimizer.type == 'paper_rmsprop'
    assert (rms.rho, rms.momentum, rms.epsilon) == (0.9, 0.9, 0.001)
    assert opt.learning_rate.type == 'scaled_exponential'
    assert (lr.decay_rate, lr.decay_epochs, lr.staircase) == (0.97, 2.4, True)


@pytest.mark.parametrize('row', paper_table2.TABLE_2, ids=lambda r: r.name)
def test_augmentation_per_model(row):
  """B2: AutoAugment 'v0' (README 80.1%); B5: RandAugment 2 x 17 (83.7%)."""
  params = exp_factory.get_exp_config(row.name)
  aug = params.task.train_data.aug_type
  assert params.task.validation_data.aug_type is None
  if row.model_id == 'b2':
    assert aug.type == 'autoaug'
    assert (aug.autoaug.augmentation_name, aug.autoaug.cutout_const,
            aug.autoaug.translate_const) == ('v0', 100, 250)
  else:
    assert aug.type == 'randaug'
    assert (aug.randaug.num_layers, aug.randaug.magnitude,
            aug.randaug.cutout_const, aug.randaug.translate_const) == (
                2, 17, 40, 100)


def test_b5_lars_65k_resolves_to_the_paper_row():
  params = exp_factory.get_exp_config('effnet_b5_lars_65k')
  lr = params.trainer.optimizer_config.learning_rate.scaled_polynomial
  assert params.task.train_data.global_batch_size == 65536
  assert lr.lr_per_256 * lr.global_batch_size / 256 == pytest.approx(20.736)
  assert lr.warmup_epochs == 43
  assert params.task.model.input_size == [456, 456, 3]
  assert params.task.model.dropout_rate == 0.4


@pytest.mark.parametrize('name', BUILT)
def test_builds_model_and_optimizer_at_tiny_size(name):
  params = exp_factory.get_exp_config(name)
  params.override({'task': {'model': {'input_size': [32, 32, 3]}}})
  params.validate()
  task = task_factory.get_task(params.task)
  model = task.build_model()
  assert model.output_shape[-1] == params.task.model.num_classes
  optimizer = task.create_optimizer(params.trainer.optimizer_config,
                                    params.runtime)
  assert isinstance(optimizer, ema.PaperExponentialMovingAverage)
  inner = optimizer._optimizer  # pylint: disable=protected-access
  expected = {'paper_lars': lars.PaperLARS,
              'paper_rmsprop': rmsprop.PaperRMSProp,
              'lamb': lamb.LAMB, 'sm3': sm3.SM3}[
                  params.trainer.optimizer_config.optimizer.type]
  assert isinstance(inner, expected)
  peak = optimizer.learning_rate(
      params.trainer.optimizer_config.learning_rate.get().train_steps // 7)
  assert float(peak) > 0
  del model
  tf_keras.backend.clear_session()
