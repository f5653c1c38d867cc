"""The bad-input table: one error line, a non-zero exit, model_dir untouched.

Each row runs `train.py`'s `main` in-process (the flags parsed as from the
command line) on the demo experiment, and checks that exactly one `error:`
line names the bad value, that no traceback is printed, that the exit code
is 2, and that model_dir is exactly as it was (absent if it was absent).
`tests/test_train_cli.py` runs a few of the same rows as real subprocesses.
"""
import os

import pytest

import train
from official_ext.core import resume_guard
from tests.conftest import file_snapshot

SHORT = 'trainer.train_epochs=0.4,trainer.eval_every_epochs=0.2'


def run_main(capsys, *args):
  train.FLAGS.unparse_flags()
  train.FLAGS(['train.py', *args])
  code = train.main(['train.py'])
  out, err = capsys.readouterr()
  return code, out, err


def assert_one_error(capsys, model_dir, fragment, *args):
  before = file_snapshot(model_dir)
  code, _, err = run_main(capsys, f'--model_dir={model_dir}', *args)
  assert code == 2, err[-2000:]
  assert 'Traceback' not in err
  errors = [l for l in err.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, err[-2000:]
  assert fragment in errors[0], errors[0]
  assert file_snapshot(model_dir) == before
  return errors[0]


def override(*fields):
  return '--params_override=' + ','.join((SHORT,) + fields)


@pytest.mark.parametrize('args, fragment', [
    (('--experiment=effnet_b5_lars_64k',),
     "unknown experiment 'effnet_b5_lars_64k'; did you mean "
     'effnet_b5_lars_65k'),
    (('--mode=trian',), "unknown --mode='trian'; use one of train, eval"),
    ((override('task.train_data.global_bach_size=64'),), 'global_bach_size'),
    ((override('task.train_data.global_batch_size=abc'),),
     "global_batch_size='abc' is a string; expected an int"),
    ((override('trainer.train_epochs=many'),),
     "trainer.train_epochs='many' is a string; expected a number"),
    ((override('task.train_data.global_batch_size=0'),),
     'global_batch_size=0 must be a positive integer'),
    ((override('task.train_data.global_batch_size=-128'),),
     'global_batch_size=-128 must be a positive integer'),
    ((override('task.train_data.global_batch_size=13'),),
     'task.train_data.global_batch_size=13 is not divisible by the 4 '
     'replicas'),
    ((override('task.validation_data.global_batch_size=30'),),
     'task.validation_data.global_batch_size=30 is not divisible by the 4 '
     'replicas'),
    ((override('task.model.norm_activation.bn_group_size=3'),),
     'bn_group_size=3'),
    ((override('task.model.norm_activation.bn_batch_size=48'),),
     'bn_batch_size=48 is not a multiple of the per-replica batch 32'),
    (('--gin_params=scaled_polynomial.lr_per_265 = 1.0',), 'lr_per_265'),
    (('--gin_params=scaled_polynomial.lr_per_256 = = 1.0',),
     'gin: Unable to parse'),
    ((override('task.train_data.embedded_dataset=',
               'task.train_data.input_path=/nonexistent/train-*'),),
     '/nonexistent/train-*'),
    ((override('task.train_data.embedded_dataset=',
               'task.train_data.input_path='),), 'task.train_data.input_path'),
    ((override('runtime.mixed_precision_dtype=fp8'),),
     "mixed_precision_dtype='fp8'; use one of float32"),
    ((override('runtime.num_cpu_replicas=0',
               'runtime.distribution_strategy=tpu',
               'runtime.tpu_connect_timeout_s=1'), '--tpu=grpc://127.0.0.1:1'),
     "cannot reach TPU 'grpc://127.0.0.1:1' (no answer from 127.0.0.1:1 "
     'within 1 s'),
])
def test_bad_input_row(capsys, tmp_path, args, fragment):
  assert_one_error(capsys, str(tmp_path / 'run'), fragment, *args)


def test_bn_group_size_is_derived_unless_fixed(capsys, tmp_path):
  assert_one_error(capsys, str(tmp_path / 'run'), 'derived',
                   '--experiment=effnet_b2_lars_16k',
                   override('task.model.norm_activation.bn_group_size=2'))


@pytest.mark.parametrize('name, text', [
    ('params.yaml', 'task: [unclosed\n'),
    ('params.yaml', '- just\n- a list\n'),
    ('summary.json', '{"evals": [ truncated'),
])
def test_corrupt_run_files_in_model_dir(capsys, tmp_path, name, text):
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  (model_dir / name).write_text(text)
  assert_one_error(capsys, str(model_dir), name, override())


def test_model_dir_that_cannot_be_written(capsys, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  assert_one_error(capsys, str(blocker / 'run'), 'is a file, not a directory',
                   override())
  if os.geteuid() == 0:
    return  # Root writes anywhere: no permission to take away.
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o500)
  try:
    assert_one_error(capsys, str(locked / 'run'), 'is not writable',
                     override())
  finally:
    locked.chmod(0o700)


def test_eval_of_a_model_dir_without_checkpoint(capsys, tmp_path):
  assert_one_error(capsys, str(tmp_path / 'run'), 'holds no checkpoint',
                   '--mode=eval', override())


def test_resume_guard_names_every_blocking_field(capsys, tmp_path):
  """A run's params.yaml, then relaunches that change it."""
  from official_ext.core import config_overrides  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / 'run')
  params = config_overrides.parse_configuration(
      'effnet_b0_digits', params_override=SHORT)
  resume_guard.write_params(params, model_dir)
  error = assert_one_error(
      capsys, model_dir, '2 field(s) that change what it computes',
      override('task.model.dropout_rate=0.5', 'runtime.num_cpu_replicas=2',
               'trainer.steps_per_loop=3'))
  assert 'task.model.dropout_rate: 0.2 there, 0.5 now' in error
  assert 'runtime.num_cpu_replicas: 4 there, 2 now' in error
  assert 'steps_per_loop' not in error and '--force_params' in error


def test_runtime_only_changes_are_allowed_and_recorded(tmp_path):
  from official_ext.core import config_overrides  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / 'run')
  parse = lambda o: config_overrides.parse_configuration(
      'effnet_b0_digits', params_override=','.join((SHORT,) + o))
  resume_guard.write_params(parse(()), model_dir)
  moved = parse(('trainer.steps_per_loop=3', 'trainer.eval_every_epochs=0.1',
                 'task.validation_data.global_batch_size=64',
                 'runtime.tpu=my-new-tpu',
                 'task.validation_data.input_path=/data/moved/val-*'))
  changes = resume_guard.check_resume(model_dir, moved)
  fields = {c[0] for c in changes}
  assert {'trainer.steps_per_loop', 'trainer.eval_every_epochs',
          'task.validation_data.global_batch_size', 'runtime.tpu',
          'task.validation_data.input_path'} <= fields
  assert all(resume_guard.is_runtime_only(f) for f in fields)
  resume_guard.write_params(moved, model_dir, changes)
  assert resume_guard.check_resume(model_dir, moved) == []  # Rewritten.
  import yaml  # pylint: disable=g-import-not-at-top
  with open(os.path.join(model_dir, resume_guard.CHANGES_FILE)) as f:
    (record,) = yaml.safe_load(f)
  # steps_per_loop is capped at the evaluation interval: 2, then 1 step.
  assert record['changes']['trainer.steps_per_loop'] == {'before': 2,
                                                          'after': 1}
  assert record['forced'] == []
  # A change of the schedule needs --force_params, and is recorded as forced.
  longer = parse(('trainer.train_epochs=0.8',))
  with pytest.raises(resume_guard.ResumeRefused, match='train_epochs'):
    resume_guard.check_resume(model_dir, longer)
  forced = resume_guard.check_resume(model_dir, longer, force=True)
  resume_guard.write_params(longer, model_dir, forced)
  with open(os.path.join(model_dir, resume_guard.CHANGES_FILE)) as f:
    history = yaml.safe_load(f)
  assert len(history) == 2 and 'trainer.train_epochs' in history[1]['forced']


def test_resuming_a_run_saved_before_depthwise_kernel_gradient_existed(
    tmp_path):
  import yaml  # pylint: disable=g-import-not-at-top
  from official_ext.core import config_overrides  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / 'run')
  params = config_overrides.parse_configuration('effnet_b0_digits',
                                                params_override=SHORT)
  resume_guard.write_params(params, model_dir)
  path = os.path.join(model_dir, resume_guard.PARAMS_FILE)
  old = resume_guard.read_params(model_dir)
  del old['task']['model']['backbone']['paper_efficientnet'][
      'depthwise_kernel_gradient']
  with open(path, 'w') as f:
    yaml.dump(old, f)
  changes = resume_guard.check_resume(model_dir, params)
  assert changes == [(
      'task.model.backbone.paper_efficientnet.depthwise_kernel_gradient',
      None, 'auto')]
