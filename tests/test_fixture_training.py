"""A paper experiment trains on a fixture through the input pipeline."""
import os
import subprocess
import sys

import pytest
import yaml

from official_ext.tools import make_fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # ~1-2 minutes on 2 busy cores (model build and tracing).
def test_effnet_b2_lars_trains_on_fixture(tmp_path):
  fx = make_fixture.make_fixture(
      str(tmp_path / 'fixture'), num_classes=4, num_train=32, num_eval=12,
      image_size=40, label_offset=1, tfds=True)
  override = {
      'task': {
          'model': {'num_classes': 4, 'input_size': [32, 32, 3]},
          # Train from the TFRecords, evaluate on the TFDS build.
          # The paper rows' label_offset (None) reads 1-based TFRecords.
          'train_data': {'input_path': fx.train_pattern, 'num_examples': 32,
                         'global_batch_size': 16, 'shuffle_buffer_size': 32},
          'validation_data': {'tfds_name': fx.tfds_name,
                              'tfds_data_dir': fx.tfds_data_dir,
                              'tfds_split': 'validation',
                              'num_examples': 12, 'global_batch_size': 8,
                              'label_offset': 1}},
      'trainer': {'train_epochs': 1.0, 'eval_every_epochs': 1.0,
                  'steps_per_loop': 2},
      # One replica: B2's trace dominates the test's time.
      'runtime': {'num_cpu_replicas': 1, 'mixed_precision_dtype': 'float32'},
  }
  override_file = tmp_path / 'override.yaml'
  override_file.write_text(yaml.safe_dump(override))
  model_dir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'train.py'),
       '--experiment=effnet_b2_lars_16k', f'--model_dir={model_dir}',
       f'--params_override={override_file}'],
      capture_output=True, text=True, timeout=900, cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert '1 replicas (MirroredStrategy), 2 steps' in out, out[-3000:]
  evals = [l for l in out.splitlines() if l.startswith('eval at step 2')]
  assert evals and 'top-1' in evals[-1], out[-3000:]
  with open(model_dir / 'params.yaml') as f:
    params = yaml.load(f, Loader=yaml.FullLoader)
  assert params['task']['train_data']['input_path'] == fx.train_pattern
  assert params['task']['validation_data']['tfds_name'] == fx.tfds_name
