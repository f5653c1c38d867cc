"""The project's experiments: registration and `train.py --experiment=list`.

`register_experiment` registers a config factory with Model Garden's
`exp_factory` and remembers the name, so the project's experiments can be
listed apart from any other registered Model Garden experiment, and the
paper's peak top-1 of the experiments that reproduce a row of its Table 2
(`paper_top1`, the target of a run's time to target).
"""
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from official.core import exp_factory

from official_ext.core import recipe
from official_ext.modeling.layers import group_assignment
from official_ext.modeling.optimization import lr_schedule

_PROJECT_EXPERIMENTS: List[str] = []
_PAPER_TOP1: Dict[str, float] = {}


def register_experiment(name: str, config_factory: Callable[[], object],
                        paper_top1: Optional[float] = None):
  """Registers `name`; `paper_top1`: the paper's peak top-1 for it, if any."""
  exp_factory.register_config_factory(name)(config_factory)
  _PROJECT_EXPERIMENTS.append(name)
  if paper_top1 is not None:
    _PAPER_TOP1[name] = float(paper_top1)


def project_experiments() -> Tuple[str, ...]:
  return tuple(_PROJECT_EXPERIMENTS)


def paper_top1(name: str) -> Optional[float]:
  """The paper's peak top-1 for experiment `name` (None: not a paper row)."""
  return _PAPER_TOP1.get(name)


COLUMNS = ('experiment', 'model', 'replicas', 'global_batch', 'optimizer',
           'lr_per_256', 'schedule', 'warmup_epochs', 'bn_groups', 'bn_batch')


def _replicas(params) -> str:
  replicas = recipe.expected_replicas(params)
  if replicas is None:
    return 'any'
  rt = params.runtime
  if rt.num_cpu_replicas > 0:
    return f'{replicas} CPU'
  return f'{replicas} TPU' if rt.distribution_strategy == 'tpu' else str(
      replicas)


def _bn_columns(params):
  """(BN group size, BN batch) as the experiment resolves them."""
  norm = params.task.model.norm_activation
  replicas = recipe.expected_replicas(params)
  if norm.bn_group_size < 1 or replicas is None:
    return f'run time ({norm.bn_group_rule})', '-'
  groups = str(norm.bn_group_size)
  if norm.bn_group_size > 1 and norm.bn_group_size == replicas:
    groups += ' (all)'
  elif group_assignment.uses_tiles(
      norm.bn_group_layout, norm.bn_group_size,
      has_mesh=recipe.chip_mesh(params, replicas) is not None):
    groups += ' (tiles)'
  per_replica = params.task.train_data.global_batch_size // replicas
  return groups, str(norm.bn_group_size * per_replica)


def describe(name: str) -> List[str]:
  params = exp_factory.get_exp_config(name)
  model = params.task.model
  backbone = model.backbone.get()
  model_id = getattr(backbone, 'model_id', model.backbone.type)
  optimizer = params.trainer.optimizer_config.optimizer.type
  lr = params.trainer.optimizer_config.learning_rate
  schedule = lr.get()
  if lr.type == 'scaled_polynomial':
    decay = f'polynomial(power={schedule.power:g})'
  elif lr.type == 'scaled_exponential':
    decay = (f'exponential({schedule.decay_rate:g} every '
             f'{schedule.decay_epochs:g} epochs)')
  else:
    decay = lr.type
  lr_per_256 = getattr(schedule, 'lr_per_256', None)
  scaled = (lr_schedule.scaled_learning_rate(
      lr_per_256, params.task.train_data.global_batch_size)
            if lr_per_256 is not None else None)
  bn_groups, bn_batch = _bn_columns(params)
  return [
      name,
      f'efficientnet-{model_id} {model.input_size[0]}px',
      _replicas(params),
      str(params.task.train_data.global_batch_size),
      optimizer,
      '-' if lr_per_256 is None else f'{lr_per_256:g} (peak {scaled:.4g})',
      decay,
      str(getattr(schedule, 'warmup_epochs', '-')),
      bn_groups,
      bn_batch,
  ]


def format_table(names: Iterable[str]) -> str:
  rows = [list(COLUMNS)] + [describe(n) for n in names]
  widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                   for r in rows)
