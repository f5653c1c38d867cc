"""Override precedence and clear failures, through the real parse path."""
import os

import pytest

import experiments  # pylint: disable=unused-import
from official_ext.core import config_overrides

ConfigError = config_overrides.ConfigError
TPU_1024_GIN = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'gin', 'tpu_v3_1024.gin')
EXP = 'effnet_b2_lars_16k'


def batch(params):
  return params.task.train_data.global_batch_size


def parse(**kwargs):
  return config_overrides.parse_configuration(EXP, **kwargs)


@pytest.fixture
def yaml_file(tmp_path):
  def write(text, name='override.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)
  return write


@pytest.fixture
def gin_file(tmp_path):
  def write(text, name='override.gin'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)
  return write


def test_defaults_without_overrides():
  assert batch(parse()) == 16384


def test_precedence_chain(yaml_file, gin_file):
  config = yaml_file('task:\n  train_data:\n    global_batch_size: 1024\n')
  assert batch(parse(config_files=[config])) == 1024
  second = yaml_file('task:\n  train_data:\n    global_batch_size: 2048\n',
                     'second.yaml')
  assert batch(parse(config_files=[config, second])) == 2048
  gin1 = gin_file('task.train_data.global_batch_size = 4096')
  assert batch(parse(config_files=[config], gin_files=[gin1])) == 4096
  assert batch(parse(config_files=[config], gin_files=[gin1],
                     gin_params=['train_data.global_batch_size = 512'])) == 512
  params = parse(config_files=[config], gin_files=[gin1],
                 gin_params=['train_data.global_batch_size = 512'],
                 params_override='task.train_data.global_batch_size=8192')
  assert batch(params) == 8192


def test_gin_sets_nested_fields_and_rescales_derived_values():
  params = parse(gin_params=[
      'task.train_data.global_batch_size = 1024',
      'scaled_polynomial.lr_per_256 = 0.5',
      'scaled_polynomial.warmup_epochs = 7',
      "task.model.norm_activation.bn_group_rule = 'fixed'",
      'task.model.norm_activation.bn_batch_size = 0',
      'task.model.norm_activation.bn_group_size = 4',
      'runtime.num_cpu_replicas = 8',
      "runtime.mixed_precision_dtype = 'bfloat16'",
      'trainer.train_epochs = 10',
  ])
  lr = params.trainer.optimizer_config.learning_rate.scaled_polynomial
  assert (lr.lr_per_256, lr.warmup_epochs) == (0.5, 7)
  assert lr.global_batch_size == 1024
  assert lr.steps_per_epoch == pytest.approx(1281167 / 1024)
  assert params.trainer.train_steps == int(10 * 1281167 / 1024)
  assert lr.train_steps == params.trainer.train_steps
  assert params.task.model.norm_activation.bn_group_size == 4
  assert params.runtime.num_cpu_replicas == 8
  assert params.runtime.mixed_precision_dtype == 'bfloat16'
  assert params._locked  # pylint: disable=protected-access


def test_params_override_beats_gin_for_derived_inputs():
  params = parse(gin_params=['trainer.train_epochs = 10'],
                 params_override='trainer.train_epochs=20')
  assert params.trainer.train_steps == int(20 * 1281167 / 16384)


@pytest.mark.parametrize('binding, fragment', [
    ('task.train_data.global_batch_sise = 4', 'global_batch_sise'),
    ('task.train_dat.global_batch_size = 4', 'task.train_dat'),
    ('scaled_polynomial.lr_per_265 = 0.1', 'lr_per_265'),
])
def test_gin_unknown_binding_fails(binding, fragment):
  with pytest.raises(ConfigError, match=fragment) as e:
    parse(gin_params=[binding])
  assert '\n' not in str(e.value)


def test_unknown_key_in_params_override_and_config_file(yaml_file):
  with pytest.raises(ConfigError, match='global_batch_sise'):
    parse(params_override='task.train_data.global_batch_sise=4')
  bad = yaml_file('task:\n  train_dat:\n    global_batch_size: 4\n')
  with pytest.raises(ConfigError, match='train_dat'):
    parse(config_files=[bad])


def test_derived_field_cannot_be_set_by_hand():
  with pytest.raises(ConfigError, match='trainer.train_epochs'):
    parse(params_override='trainer.train_steps=10')
  with pytest.raises(ConfigError, match='derived'):
    parse(gin_params=['scaled_polynomial.global_batch_size = 10'])


def test_unknown_experiment_lists_registered_ones():
  with pytest.raises(ConfigError, match='effnet_b5_lars_65k'):
    config_overrides.parse_configuration('effnet_b9_lars_1k')


def test_invalid_value_fails_before_training():
  with pytest.raises(ConfigError, match='global_batch_size'):
    parse(params_override='task.train_data.global_batch_size=0')


def test_gin_bindings_do_not_leak_between_parses():
  parse(gin_params=['task.train_data.global_batch_size = 1024'])
  assert batch(parse()) == 16384


def test_precision_modes_resolve_the_backbone_conv_dtype():
  backbone = lambda p: p.task.model.backbone.paper_efficientnet
  assert backbone(parse()).conv_dtype == 'bfloat16'  # paper rows: conv-only
  assert backbone(parse(gin_params=[
      "runtime.mixed_precision_dtype = 'float32'"])).conv_dtype == ''
  whole = parse(params_override='runtime.mixed_precision_dtype=bfloat16')
  assert backbone(whole).conv_dtype == ''  # the global policy covers all
  demo = config_overrides.parse_configuration('effnet_b0_digits')
  assert demo.runtime.mixed_precision_dtype == 'float32'
  assert backbone(demo).conv_dtype == ''
  with pytest.raises(ConfigError, match="'bf16'.*conv_bfloat16"):
    parse(params_override='runtime.mixed_precision_dtype=bf16')


FIXED = ('task.model.norm_activation.bn_group_rule=fixed,'
         'task.model.norm_activation.bn_batch_size=0,')


@pytest.mark.parametrize('override, fragment', [
    (FIXED + 'runtime.num_cpu_replicas=8,'
     'task.model.norm_activation.bn_group_size=3', 'does not divide'),
    (FIXED + 'runtime.num_cpu_replicas=8,'
     'task.model.norm_activation.bn_group_size=16', 'bn_group_size=16'),
    ('runtime.num_cpu_replicas=8,task.model.norm_activation.bn_group_rule='
     'fixed,task.model.norm_activation.bn_batch_size=3000',
     'bn_batch_size=3000 is not a multiple of the per-replica batch 2048'),
    ('runtime.num_cpu_replicas=12,task.train_data.global_batch_size=12288,'
     'task.validation_data.global_batch_size=12288,'
     'task.model.norm_activation.bn_group_rule=tpu_batch_norm',
     'groups of 8 replicas, which do not divide the 12 replicas'),
    ('task.model.norm_activation.bn_group_rule=sync',
     "bn_group_rule='sync'; use one of 'fixed', 'distributed_batch_norm', "
     "'tpu_batch_norm'"),
    ('task.model.norm_activation.bn_group_layout=rows',
     "bn_group_layout='rows'; use one of 'auto', 'contiguous', 'tiles'"),
    ('task.model.norm_activation.bn_group_size=8',
     'bn_group_size=8, which is derived .*bn_group_rule'),
    ('runtime.num_cpu_replicas=8,task.model.norm_activation.bn_group_layout='
     'tiles', "layout 'tiles' .*needs a 2-D chip mesh"),
    ('runtime.tpu_cores=1000', 'not divisible by the 1000 replicas'),
    # Tiles are made of whole chips (2 cores each on TPU-v3).
    ('runtime.tpu_cores=24,runtime.device_mesh=[6,2],'
     'task.train_data.global_batch_size=2400,'
     'task.validation_data.global_batch_size=2400,' + FIXED +
     'task.model.norm_activation.bn_group_size=3,'
     'task.model.norm_activation.bn_group_layout=tiles',
     'group_size=3 is not a multiple of cores_per_chip=2'),
])
def test_impossible_bn_groups_fail_at_config_time(override, fragment):
  with pytest.raises(ConfigError, match=fragment) as e:
    parse(params_override=override)
  assert '\n' not in str(e.value)


def test_bn_batch_size_sets_group_size_and_mesh_is_checked():
  # 16384 over 8 replicas = 2048 per replica; BN batch 8192 = 4 replicas.
  params = parse(params_override=FIXED.replace('bn_batch_size=0', 'bn_batch_'
                                               'size=8192') +
                 'runtime.num_cpu_replicas=8')
  assert params.task.model.norm_activation.bn_group_size == 4
  fixed_64 = ["task.model.norm_activation.bn_group_rule = 'fixed'",
              'task.model.norm_activation.bn_batch_size = 0',
              'task.model.norm_activation.bn_group_size = 64']
  params = parse(gin_files=[TPU_1024_GIN], gin_params=fixed_64 + [
      'runtime.device_mesh = [32, 16]'])
  assert params.task.model.norm_activation.device_mesh == [32, 16]
  with pytest.raises(ConfigError, match='960 cores'):
    parse(gin_files=[TPU_1024_GIN], gin_params=fixed_64 + [
        'runtime.device_mesh = [30, 16]'])


def test_reference_bn_rules_follow_the_replica_count():
  norm = lambda p: p.task.model.norm_activation
  # LARS rows (DistributedBatchNormalization, BN batch 128): all replicas up
  # to 8, then 128 / per-replica batch.
  assert norm(parse()).bn_group_size == 4  # 16384 on 512 cores: 32 each.
  for replicas, group in ((2, 2), (8, 8)):
    assert norm(parse(params_override=(
        f'runtime.num_cpu_replicas={replicas}'))).bn_group_size == group
  assert norm(parse(params_override=(
      'runtime.tpu_cores=256'))).bn_group_size == 2  # 64 per core.
  # RMSProp rows (TpuBatchNormalization): local up to 8, then
  # max(8, replicas // 8).
  rmsprop = lambda **kw: norm(config_overrides.parse_configuration(
      'effnet_b5_rmsprop_4k', **kw)).bn_group_size
  assert rmsprop() == 16
  assert rmsprop(params_override='runtime.num_cpu_replicas=8') == 1
  assert rmsprop(params_override='runtime.tpu_cores=32') == 8
  assert rmsprop(params_override='runtime.tpu_cores=1024') == 128
  # Unknown until the strategy exists (multi-worker): resolved at run time.
  deferred = parse(params_override=(
      'runtime.distribution_strategy=multi_worker_mirrored'))
  assert norm(deferred).bn_group_size == 0
  resolved = config_overrides.resolve_for_replicas(deferred, 8)
  assert norm(resolved).bn_group_size == 8  # Up to 8: all replicas.
  resolved = config_overrides.resolve_for_replicas(deferred, 16)
  assert norm(resolved).bn_group_size == 1  # 1024 per replica > 128.
  assert resolved._locked and norm(deferred).bn_group_size == 0  # pylint: disable=protected-access


def test_live_tpu_slice_must_match_tpu_cores():
  params = parse(gin_files=[TPU_1024_GIN])
  assert config_overrides.resolve_for_replicas(params, 1024, tpu=True) is (
      params)
  with pytest.raises(ConfigError) as e:
    config_overrides.resolve_for_replicas(params, 512, tpu=True)
  message = str(e.value)
  assert '512 cores' in message and 'runtime.tpu_cores=1024' in message
  assert '--params_override=runtime.tpu_cores=512' in message
  assert '64 per core' in message
  # Accepting the new slice: per-core batch and BN groups follow 512 cores.
  on_512 = parse(gin_files=[TPU_1024_GIN],
                 params_override='runtime.tpu_cores=512')
  assert config_overrides.resolve_for_replicas(on_512, 512, tpu=True) is on_512
  assert on_512.task.model.norm_activation.bn_group_size == 2
  # tpu_cores=0: any slice, resolved for its cores.
  anywhere = parse(gin_files=[TPU_1024_GIN],
                   params_override='runtime.tpu_cores=0')
  assert config_overrides.resolve_for_replicas(
      anywhere, 256, tpu=True).task.model.norm_activation.bn_group_size == 1


def test_several_experiments_in_one_process():
  """Experiments whose config trees differ (digits: no augmentation node;
  B5: RandAugment), resolved in turn in one process, with gin bindings."""
  names = ['effnet_b0_digits', 'effnet_b5_lars_65k', 'effnet_b2_rmsprop_4k',
           'effnet_b5_rmsprop_8k', 'effnet_b0_digits', 'effnet_b5_lars_65k']
  for name in names:
    gin_params = ['task.train_data.global_batch_size = 2048']
    if name.startswith('effnet_b5'):
      gin_params.append('task.train_data.aug_type.randaug.magnitude = 9')
    params = config_overrides.parse_configuration(name, gin_params=gin_params)
    assert params.task.train_data.global_batch_size == 2048
    if name.startswith('effnet_b5'):
      assert params.task.train_data.aug_type.randaug.magnitude == 9


def test_gin_binding_of_a_section_only_another_experiment_has_is_refused():
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from official.vision.configs import image_classification as mg_ic  # pylint: disable=g-import-not-at-top,unused-import
  other = exp_factory.get_exp_config('resnet_imagenet')
  ours = exp_factory.get_exp_config('effnet_b0_digits')
  paths = lambda p: {path for path, _ in config_overrides._config_nodes(p)}  # pylint: disable=protected-access
  only_other = sorted(paths(other) - paths(ours))
  assert only_other
  config_overrides.register_gin_nodes(other)
  field = config_overrides._leaf_fields(  # pylint: disable=protected-access
      config_overrides.recipe.get_field(other, only_other[0]))[0]
  with pytest.raises(ConfigError, match=only_other[0]) as e:
    config_overrides.parse_configuration(
        'effnet_b0_digits', gin_params=[f'{only_other[0]}.{field} = 1'])
  assert '\n' not in str(e.value)


def test_both_weight_decay_settings_fail_at_config_time():
  """The task's L2 term and Model Garden's l2_weight_decay would add up."""
  with pytest.raises(ConfigError, match=(
      r'task\.losses\.weight_decay=1e-05 and '
      r'task\.losses\.l2_weight_decay=0\.0001 are both set')):
    parse(params_override='task.losses.l2_weight_decay=1e-4')
  only_model_garden = parse(params_override=(
      'task.losses.weight_decay=0,task.losses.l2_weight_decay=1e-4'))
  assert only_model_garden.task.losses.l2_weight_decay == 1e-4
