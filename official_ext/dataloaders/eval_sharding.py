"""Exact evaluation sharding: padded per-pipeline lengths and which files each
eval input pipeline reads.
"""
import math
from typing import List, Sequence

from official.vision.configs import image_classification as mg_ic

from official_ext.dataloaders.sources import _make_source, pipeline_files


def eval_padded_examples_per_pipeline(num_examples: int,
                                      global_batch_size: int,
                                      num_pipelines: int) -> int:
  """Examples (real + padding) each eval pipeline yields."""
  if global_batch_size % num_pipelines:
    raise ValueError(
        f'global_batch_size {global_batch_size} is not divisible by '
        f'{num_pipelines} input pipelines')
  steps = math.ceil(num_examples / global_batch_size)
  return steps * (global_batch_size // num_pipelines)


def eval_reads_own_files(record_counts: Sequence[int], num_examples: int,
                         global_batch_size: int, num_pipelines: int) -> bool:
  """Whether eval pipelines read only their own files (`pipeline_files`).

  They do when there are at least as many files as pipelines and every
  pipeline's records fit in the padded length all pipelines share
  (`eval_padded_examples_per_pipeline`, i.e. `ceil(num_examples /
  global_batch_size)` steps, the recipe's `trainer.validation_steps`).
  Otherwise (fewer files, or files so uneven that one pipeline's share needs
  more steps) every pipeline reads all files and keeps 1/P of the records.
  """
  num_files = len(record_counts)
  if num_pipelines <= 1 or num_files < num_pipelines:
    return False
  capacity = eval_padded_examples_per_pipeline(
      num_examples, global_batch_size, num_pipelines)
  largest = max(sum(record_counts[j] for j in pipeline_files(
      num_files, num_pipelines, i)) for i in range(num_pipelines))
  return largest <= capacity


def eval_files(params: mg_ic.DataConfig, num_pipelines: int,
               pipeline_id: int) -> List[str]:
  """The files eval input pipeline `pipeline_id` of `num_pipelines` reads."""
  source = _make_source(params)
  names = source.file_names()
  if eval_reads_own_files(source.record_counts(), params.num_examples,
                          params.global_batch_size, num_pipelines):
    return [names[j] for j in pipeline_files(len(names), num_pipelines,
                                             pipeline_id)]
  return names
