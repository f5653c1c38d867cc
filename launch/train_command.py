"""The `train.py` command line of a launch, checked before anything runs.

Both launchers resolve the experiment through the project's registry with
every override the cluster job will pass (`config_overrides
.parse_configuration`), so a misspelled experiment or key, a batch that does
not split over the replicas or an impossible BN group stops the launch with
one line, before a slice is created or a host is contacted.
"""
import glob
import os
import re
import shlex
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

import experiments  # pylint: disable=unused-import  (registers experiments)
from launch.commands import LaunchError
from official.modeling.hyperparams import params_dict
from official_ext.core import config_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = 'gin'
RUNS_DIR = 'runs'
MODE = 'train_and_eval'
DATA_FORMATS = ('tfrecord', 'tfds')
TFDS_NAME = 'imagenet2012'
SPLITS = (('train_data', 'train'), ('validation_data', 'validation'))
_SLICE_GIN_BINDINGS = {
    'tpu_cores': re.compile(r'^runtime\.tpu_cores\s*=\s*(\d+)', re.M),
    'global_batch_size': re.compile(
        r'^task\.train_data\.global_batch_size\s*=\s*(\d+)', re.M),
}


def resolve(experiment: str, gin_files: Sequence[str] = (),
            params_override: str = ''):
  """The experiment's params with these overrides, or LaunchError."""
  try:
    return config_overrides.parse_configuration(
        experiment, gin_files=[os.path.join(ROOT, f) for f in gin_files],
        params_override=params_override)
  except config_overrides.ConfigError as e:
    raise LaunchError(str(e)) from e


def slice_gin_files() -> Dict[Tuple[int, int], str]:
  """(TPU cores, global batch) -> the gin file setting them, e.g. gin/..."""
  found = {}
  for path in sorted(glob.glob(os.path.join(ROOT, GIN_DIR, 'tpu_*.gin'))):
    with open(path) as f:
      text = f.read()
    values = {name: pattern.search(text)
              for name, pattern in _SLICE_GIN_BINDINGS.items()}
    if all(values.values()):
      key = (int(values['tpu_cores'].group(1)),
             int(values['global_batch_size'].group(1)))
      found[key] = os.path.relpath(path, ROOT)
  return found


def slice_gin_file(experiment: str) -> str:
  """The slice gin file of the experiment's own TPU cores and batch."""
  params = resolve(experiment)
  key = (params.runtime.tpu_cores, params.task.train_data.global_batch_size)
  files = slice_gin_files()
  if key not in files:
    raise LaunchError(
        f'experiment {experiment!r} is not a TPU slice experiment (it runs '
        f'on runtime.tpu_cores={key[0]} at global batch {key[1]}; slice gin '
        f'files exist for {", ".join(f"{c} cores x {b}" for c, b in files)})')
  return files[key]


def stable_model_dir(base: str, run_name: str) -> str:
  """<base>/runs/<run_name>: the same for every launch of the same run."""
  return f'{base.rstrip("/")}/{RUNS_DIR}/{run_name}'


def data_overrides(data: str, data_format: str,
                   label_offset: Optional[int] = None) -> Dict[str, object]:
  """Override fields that point both splits at `data`.

  The label offset is left to the experiment unless given: the paper rows
  read ImageNet's convention of the source (label_offset=None).
  """
  if data_format not in DATA_FORMATS:
    raise LaunchError(f'--data_format={data_format!r}; use one of '
                      f'{", ".join(DATA_FORMATS)}')
  data = data.rstrip('/')
  fields = {}
  for split, name in SPLITS:
    prefix = f'task.{split}'
    if data_format == 'tfrecord':
      fields[f'{prefix}.input_path'] = f'{data}/{name}-*'
    else:
      fields[f'{prefix}.tfds_name'] = TFDS_NAME
      fields[f'{prefix}.tfds_split'] = name
      fields[f'{prefix}.tfds_data_dir'] = data
    if label_offset is not None:
      fields[f'{prefix}.label_offset'] = label_offset
  return fields


def override_keys(params_override: str) -> List[str]:
  """The dotted keys a 'a.b=1,c.d=x' override sets, or LaunchError."""
  if not params_override:
    return []
  try:
    nested = yaml.safe_load(
        params_dict.nested_csv_str_to_json_str(params_override))
  except (ValueError, yaml.YAMLError) as e:
    raise LaunchError(
        f'--params_override={params_override!r} is not of the form '
        f'a.b=1,c.d=x ({e})') from e

  def flatten(node, path):
    if isinstance(node, dict):
      for key, value in node.items():
        yield from flatten(value, f'{path}.{key}' if path else str(key))
    else:
      yield path

  return list(flatten(nested, ''))


def combined_override(launcher_fields: Dict[str, object],
                      user_override: str) -> str:
  """The launcher's fields, then the user's; a key set by both is refused."""
  clash = sorted(set(launcher_fields) & set(override_keys(user_override)))
  if clash:
    raise LaunchError(
        f'--params_override sets {clash[0]}, which the launcher sets from its '
        'own flags; drop it from --params_override or change that flag')
  parts = [f'{key}={_text(value)}' for key, value in launcher_fields.items()]
  if user_override:
    parts.append(user_override)
  return ','.join(parts)


def _text(value) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  return str(value)


def train_argv(python: str, experiment: str, model_dir: str,
               gin_files: Sequence[str] = (), params_override: str = '',
               tpu: Optional[str] = None) -> List[str]:
  """`python train.py ...` as every worker of the job runs it."""
  argv = [python, 'train.py', f'--experiment={experiment}', f'--mode={MODE}']
  if tpu is not None:
    argv.append(f'--tpu={tpu}')
  argv += [f'--gin_file={f}' for f in gin_files]
  argv.append(f'--model_dir={model_dir}')
  if params_override:
    argv.append(f'--params_override={params_override}')
  return argv


def shell(argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> str:
  """`argv` as one shell command line, with `env` assignments in front."""
  assignments = [f'{k}={shlex.quote(v)}' for k, v in (env or {}).items()]
  return ' '.join(assignments + [shlex.join(argv)])
