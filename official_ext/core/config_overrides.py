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
import difflib
import inspect
import typing
from typing import Any, Dict, Optional, Sequence

import gin
import yaml

from official.core import exp_factory
from official.modeling import hyperparams
from official.modeling.hyperparams import base_config

from official_ext.core import experiment_list
from official_ext.core import recipe
from official_ext.core import tpu_slice

GIN_ROOT_MODULE = 'experiment'


class ConfigError(ValueError):
  """A user-facing configuration error, reported as one line."""


# Registered gin configurables: path -> (field names, callable).
_GIN_NODES: Dict[str, Any] = {}
# The paths of the experiment parsed last; other registered paths are stale.
_CURRENT_PATHS: set = set()


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
  """Makes each config node of `params` a gin configurable named by its path.

  A path registered earlier (by another experiment class in this process)
  with other fields is registered again with this experiment's fields, so
  any sequence of experiments resolves in one process.
  """
  _CURRENT_PATHS.clear()
  for path, node in _config_nodes(params):
    fields = tuple(_leaf_fields(node))
    _CURRENT_PATHS.add(path)
    if path in _GIN_NODES and _GIN_NODES[path][0] == fields:
      continue
    module, _, name = f'{GIN_ROOT_MODULE}.{path}'.rpartition('.')
    if path in _GIN_NODES:
      # Gin refuses a second configurable of one name outside its
      # interactive mode, which exists to allow exactly this.
      gin.enter_interactive_mode()
    try:
      with gin.unlock_config():  # Parsing locks gin's config.
        configurable = gin.external_configurable(
            _make_node_fn(fields), name=name, module=module)
    finally:
      if path in _GIN_NODES:
        gin.exit_interactive_mode()
    _GIN_NODES[path] = (fields, configurable)


def gin_overrides() -> Dict[str, Any]:
  """Nested dict of every experiment field bound in the parsed gin config."""
  nested: Dict[str, Any] = {}
  for path, (_, configurable) in _GIN_NODES.items():
    bound = configurable()
    if not bound:
      continue
    if path not in _CURRENT_PATHS:
      raise ConfigError(
          f'gin binds {path}.{sorted(bound)[0]}, but this experiment has no '
          f'{path!r} section')
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
    if name in before and value != before[name]:
      raise ConfigError(
          f'{source} sets {name}={value!r}, which is derived from the recipe; '
          f'override {recipe.derived_field_source(name)} instead')


_TYPE_NAMES = {bool: 'a bool', int: 'an int', float: 'a number',
               str: 'a string', list: 'a list', tuple: 'a list'}


def _accepts(hint, value) -> Optional[bool]:
  """Whether a field annotated `hint` accepts `value` (None: not checked).

  None is accepted everywhere: Model Garden's `key=` override gives None.
  """
  if value is None:
    return None
  origin = typing.get_origin(hint)
  if origin is typing.Union:
    answers = [_accepts(h, value) for h in typing.get_args(hint)]
    return None if None in answers else any(answers)
  if hint is type(None):
    return value is None
  if origin in (list, tuple) or hint in (list, tuple):
    return isinstance(value, (list, tuple))
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is str:
    return isinstance(value, str)
  return None


def _expected(hint) -> str:
  if typing.get_origin(hint) is typing.Union:
    return ' or '.join(_expected(h) for h in typing.get_args(hint)
                       if h is not type(None))
  if typing.get_origin(hint) in (list, tuple):
    return 'a list'
  return _TYPE_NAMES.get(hint, getattr(hint, '__name__', str(hint)))


def check_types(node: base_config.Config, path: str = '') -> None:
  """Every leaf of `node` has the type its dataclass field declares.

  Model Garden's override accepts any value (a string for an int field fails
  much later, inside the trainer), so this checks before anything is built.
  """
  try:
    hints = typing.get_type_hints(type(node))
  except (NameError, TypeError):
    hints = {}
  for name in node.as_dict():
    value = getattr(node, name)
    dotted = f'{path}.{name}' if path else name
    if isinstance(value, base_config.Config):
      check_types(value, dotted)
    elif name in hints and _accepts(hints[name], value) is False:
      raise ConfigError(
          f'{dotted}={value!r} is '
          f'{_TYPE_NAMES.get(type(value), type(value).__name__)}; expected '
          f'{_expected(hints[name])}')


def get_experiment(name: str):
  try:
    return exp_factory.get_exp_config(name)
  except (KeyError, LookupError) as e:
    known = experiment_list.project_experiments()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = (f'did you mean {" or ".join(close)}? ' if close else '')
    raise ConfigError(
        f'unknown experiment {name!r}; {hint}registered experiments: '
        f'{", ".join(known)} (python train.py --experiment=list)') from e


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

  # Each parse starts from an empty, unlocked gin config, as a fresh process
  # does (parsing locks it).
  gin.clear_config()
  register_gin_nodes(params)
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

  check_types(params)
  try:
    recipe.resolve(params)
    params.validate()
  except (ValueError, KeyError, AssertionError) as e:
    raise ConfigError(str(e)) from e
  if lock:
    params.lock()
  return params


def resolve_for_replicas(params, num_replicas: int, tpu: bool = False):
  """`params` resolved for the live replica count of the run's strategy.

  Batch-derived fields (the BN groups of `bn_group_rule`) follow the live
  count; returns `params` itself when it was resolved for that count, else a
  resolved, locked copy. With `tpu`, the live slice must have
  `runtime.tpu_cores` cores (when set): a different slice would silently
  change the per-core batch and the BN groups.
  """
  if tpu:
    mismatch = tpu_slice.check_cores(
        num_replicas, params.runtime.tpu_cores,
        params.task.train_data.global_batch_size)
    if mismatch:
      raise ConfigError(mismatch)
  if recipe.expected_replicas(params) == num_replicas:
    return params
  resolved = params.replace()
  try:
    recipe.resolve(resolved, num_replicas=num_replicas)
    resolved.validate()
  except (ValueError, KeyError, AssertionError) as e:
    raise ConfigError(f'on {num_replicas} replicas: {e}') from e
  resolved.lock()
  return resolved
