"""Table 2 in miniature: global batch x optimizer on the digits demo data.

The paper's claim (Table 2): LARS with polynomial decay holds accuracy as the
global batch grows, where RMSProp with exponential decay and linear LR scaling
degrades. Here the same rules on the 1,438 training digits: a fixed budget of
`TRAIN_EPOCHS` epochs, warmup in epochs, the learning rate given per 256
examples and scaled linearly with the batch. Every cell is a registered
experiment over the demo (`table2_digits_<optimizer>_b<batch>`), so one cell
reruns with one command:

  python train.py --experiment=table2_digits_lars_b512 \
      --params_override=runtime.seed=2

The LR per 256 of each optimizer (`LR_PER_256`) was chosen once, at the
smallest batch, by the `table2_digits_lr_sweep` study (the grid
`LR_SWEEP`, one seed, best peak top-1), and is only scaled after that.
Studies (`STUDIES`) are run by `python -m official_ext.tools.study`.

Sizing, so that the whole study runs in under an hour on 2 CPU cores:
EfficientNet-B0 at 16x16 pixels (the digits are 8x8), one replica (batch norm
over the whole global batch), 20 epochs with 2 of warmup, an evaluation every
4 epochs. Each run is a function of its seed (`runtime.deterministic`),
which needs dropout and stochastic depth off (their random state is in no
checkpoint).
"""
import dataclasses
from typing import Dict, Sequence, Tuple

from experiments import digits_demo
from experiments import recipe_builder
from official_ext.core import experiment_list

# 1/64 of the paper's 4k, 16k and 65k rows: the same 16x span of batches.
BATCHES = (64, 256, 1024)
OPTIMIZERS = ('rmsprop', 'lars', 'lamb', 'sm3')
TRAIN_EPOCHS = 20
WARMUP_EPOCHS = 2
EVAL_EVERY_EPOCHS = 4
IMAGE_SIZE = 16
SEEDS = (1, 2)

# Chosen at the smallest batch by the table2_digits_lr_sweep study
# (docs/table2_digits.md).
LR_PER_256 = {
    'rmsprop': 0.004,
    'lars': 32.0,
    'lamb': 0.032,
    'sm3': 0.4,
}
# The grid the sweep tries at the smallest batch: a factor 4 apart around
# each optimizer's usual value (RMSProp: the paper's 0.016; LARS: the demo's
# 2), extended by a factor 4 past an edge that won, until the best is inside.
LR_SWEEP = {
    'rmsprop': (0.001, 0.004, 0.016, 0.064),
    'lars': (0.5, 2.0, 8.0, 32.0, 128.0),
    'lamb': (0.008, 0.032, 0.128),
    'sm3': (0.1, 0.4, 1.6, 6.4),
}

LR_FIELD = {
    'rmsprop': 'trainer.optimizer_config.learning_rate.scaled_exponential.'
               'lr_per_256',
}
_POLYNOMIAL_LR = ('trainer.optimizer_config.learning_rate.scaled_polynomial.'
                  'lr_per_256')


def lr_field(optimizer: str) -> str:
  """The params field holding the LR per 256 of `optimizer`'s schedule."""
  return LR_FIELD.get(optimizer, _POLYNOMIAL_LR)


def cell_name(optimizer: str, batch: int) -> str:
  return f'table2_digits_{optimizer}_b{batch}'


def cell_recipe(optimizer: str, batch: int) -> recipe_builder.Recipe:
  return dataclasses.replace(
      digits_demo.DIGITS_DEMO,
      image_size=IMAGE_SIZE,
      global_batch_size=batch,
      # Evaluation is exact for any batch; a fixed one keeps it equally cheap.
      eval_batch_size=128,
      optimizer=optimizer,
      lr_per_256=LR_PER_256[optimizer],
      warmup_epochs=WARMUP_EPOCHS,
      train_epochs=TRAIN_EPOCHS,
      eval_every_epochs=EVAL_EVERY_EPOCHS,
      num_cpu_replicas=1,
      # A deterministic run keeps no dropout state in its checkpoints.
      dropout_rate=0.0,
      stochastic_depth_drop_rate=0.0,
      deterministic=True,
      seed=SEEDS[0],
  )


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of a study, before seeds: an experiment and its overrides."""
  name: str
  experiment: str
  optimizer: str
  global_batch_size: int
  params_override: str = ''


@dataclasses.dataclass(frozen=True)
class Study:
  cells: Tuple[Cell, ...]
  seeds: Sequence[int]
  description: str
  # What the plot puts on its x axis: a cell's global batch, or a
  # hyperparameter of its summary.json (`lr_per_256`).
  x_axis: str = 'global_batch_size'


def _grid(optimizers, batches) -> Tuple[Cell, ...]:
  return tuple(Cell(cell_name(o, b), cell_name(o, b), o, b)
               for o in optimizers for b in batches)


def _sweep() -> Tuple[Cell, ...]:
  batch = BATCHES[0]
  return tuple(
      Cell(f'lr_sweep_{o}_lr{lr:g}', cell_name(o, batch), o, batch,
           params_override=f'{lr_field(o)}={lr!r}')
      for o in OPTIMIZERS for lr in LR_SWEEP[o])


STUDIES: Dict[str, Study] = {
    'table2_digits': Study(
        _grid(OPTIMIZERS, BATCHES), SEEDS,
        f'{len(OPTIMIZERS)} optimizers x global batches '
        f'{", ".join(map(str, BATCHES))}, seeds {SEEDS}'),
    'table2_digits_quick': Study(
        _grid(('rmsprop', 'lars'), (BATCHES[0], BATCHES[-1])), SEEDS[:1],
        'RMSProp and LARS at global batches '
        f'{BATCHES[0]} and {BATCHES[-1]}, one seed'),
    'table2_digits_lr_sweep': Study(
        _sweep(), SEEDS[:1],
        f'LR per 256 of each optimizer at global batch {BATCHES[0]}, one '
        'seed', x_axis='lr_per_256'),
}
# `--quick` of a study: its smaller variant.
QUICK = {'table2_digits': 'table2_digits_quick'}

for _optimizer in OPTIMIZERS:
  for _batch in BATCHES:
    experiment_list.register_experiment(
        cell_name(_optimizer, _batch),
        lambda o=_optimizer, b=_batch: recipe_builder.build_experiment(
            cell_recipe(o, b)))
