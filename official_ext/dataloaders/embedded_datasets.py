"""Datasets the project converts itself from installed packages.

An experiment names one in `DataConfig.embedded_dataset`; on first use it is
written as TFRecords in Model Garden's format to a cache directory
($EFFNET_DATA_DIR, else ~/.cache/effnet_supercomputer) and read back through
the project's input pipeline like any other TFRecord dataset.
"""
from official_ext.dataloaders import digits

EMBEDDED_DATASETS = ('digits',)


def materialize(params):
  """Returns `params` with input_path pointing at the materialized split."""
  if params.embedded_dataset != 'digits':
    raise ValueError(
        f'unknown embedded_dataset {params.embedded_dataset!r}; known: '
        f'{", ".join(EMBEDDED_DATASETS)}')
  if params.input_path:
    return params
  splits = digits.prepare_digits()
  pattern = splits.train_pattern if params.is_training else splits.eval_pattern
  return params.replace(input_path=pattern)
