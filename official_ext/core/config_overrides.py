"""Resolves an experiment's params from its defaults and every override source.

Precedence, lowest to highest (each later source wins over the earlier ones):

  1. the registered experiment's defaults (`exp_factory.get_exp_config`);
  2. each `--config_file` YAML, in the order given;
  3. gin: each `--gin_file`, then each `--gin_params` binding, in order
     (gin's own rule: a later binding of the same parameter wins);
  4. `--tpu` (sets runtime.tpu and the TPU strategy);
  5. `--params_override`.

Then the derived fields are recomputed (`official_ext.core.recipe.resolve`),
the params validated and locked.

Gin reaches every experiment field: each config node becomes a gin
configurable named by its path, whose parameters are the node's leaf fields,
e.g. `task.train_data.global_batch_size = 4096`,
`trainer.optimizer_config.learning_rate.scaled_polynomial.lr_per_256 = 0.1`.
Gin matches selectors by suffix, so `train_data.global_batch_size` or
`scaled_polynomial.lr_per_256` work where unambiguous. Gin rejects an unknown
node or field at parse time, before anything is built.
"""
import inspect
from typing import Any, Dict, Optional, Sequence

import gin
import yaml

from official.core import exp_factory
from official.modeling import hyperparams
from official.modeling.hyperparams import base_config

from official_ext.core import experiment_list
from official_ext.core import recipe

GIN_ROOT_MODULE = 'experiment'


class ConfigError(ValueError):
  """A user-facing configuration error, reported as one line."""


# Registered gin configurables: path -> (field names, callable).
_GIN_NODES: Dict[str, Any] = {}


def _leaf_fields(node: base_config.Config):
  return [name for name in node.as_dict()
          if not isinstance(getattr(node, name), base_config.Config)]


def _config_nodes(node: base_config.Config, path: str = ''):
  """Yields (dotted path, node) for `node` and every nested config."""
  if path:
    yield path, node
  for name in node.as_dict():
    child = getattr(node, name)
    if isinstance(child, base_config.Config):
      yield from _config_nodes(child, f'{path}.{name}' if path else name)


def _make_node_fn(fields):
  def node_bindings(**bound):
    return bound
  node_bindings.__signature__ = inspect.Signature([
      inspect.Parameter(f, inspect.Parameter.KEYWORD_ONLY, default=None)
      for f in fields])
  return node_bindings


def register_gin_nodes(params: base_config.Config) -> None:
  """Makes each config node of `params` a gin configurable (once per path)."""
  for path, node in _config_nodes(params):
    fields = tuple(_leaf_fields(node))
    if path in _GIN_NODES:
      if _GIN_NODES[path][0] != fields:
        raise ConfigError(
            f'gin node {path!r} is already registered with other fields; '
            'run one experiment class per process')
      continue
    module, _, name = f'{GIN_ROOT_MODULE}.{path}'.rpartition('.')
    configurable = gin.external_configurable(
        _make_node_fn(fields), name=name, module=module)
    _GIN_NODES[path] = (fields, configurable)


def gin_overrides() -> Dict[str, Any]:
  """Nested dict of every experiment field bound in the parsed gin config."""
  nested: Dict[str, Any] = {}
  for path, (_, configurable) in _GIN_NODES.items():
    bound = configurable()
    if not bound:
      continue
    target = nested
    for name in path.split('.'):
      target = target.setdefault(name, {})
    target.update(bound)
  return nested


def _apply(params, override, source: str):
  try:
    return hyperparams.override_params_dict(params, override, is_strict=True)
  except (KeyError, AttributeError, TypeError, ValueError,
          yaml.YAMLError) as e:
    message = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    raise ConfigError(f'{source}: {message}') from e


def _check_derived_untouched(params, before: Dict[str, Any], source: str):
  for name, value in recipe.derived_values(params).items():
    if value != before[name]:
      raise ConfigError(
          f'{source} sets {name}={value!r}, which is derived from the recipe; '
          f'override {recipe.DERIVED_FIELDS[name]} instead')


def get_experiment(name: str):
  try:
    return exp_factory.get_exp_config(name)
  except (KeyError, LookupError) as e:
    raise ConfigError(
        f'unknown experiment {name!r}; registered experiments: '
        f'{", ".join(experiment_list.project_experiments())}') from e


def parse_configuration(experiment: str,
                        config_files: Sequence[str] = (),
                        gin_files: Sequence[str] = (),
                        gin_params: Sequence[str] = (),
                        tpu: Optional[str] = None,
                        params_override: str = '',
                        lock: bool = True):
  """Returns the validated experiment params after every override source."""
  params = get_experiment(experiment)
  before = recipe.derived_values(params)

  for path in config_files or ():
    params = _apply(params, path, f'--config_file={path}')
    _check_derived_untouched(params, before, f'--config_file={path}')

  register_gin_nodes(params)
  # Each parse starts from an empty gin config, as a fresh process does.
  gin.clear_config()
  if gin_files or gin_params:
    try:
      gin.parse_config_files_and_bindings(
          list(gin_files or ()), list(gin_params or ()))
    except (ValueError, KeyError, IOError, SyntaxError) as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
      raise ConfigError(f'gin: {first_line}') from e
  bound = gin_overrides()
  if bound:
    params = _apply(params, bound, 'gin')
    _check_derived_untouched(params, before, 'gin')

  if tpu:
    params = _apply(params, {'runtime': {'tpu': tpu,
                                         'distribution_strategy': 'tpu'}},
                    '--tpu')

  if params_override:
    params = _apply(params, params_override,
                    f'--params_override={params_override}')
    _check_derived_untouched(params, before, '--params_override')

  try:
    recipe.resolve(params)
    params.validate()
  except (ValueError, KeyError, AssertionError) as e:
    raise ConfigError(str(e)) from e
  if lock:
    params.lock()
  return params
