"""Eval reads per host: 8 simulated input pipelines over a 32-file fixture.

For each pipeline, the records and bytes its TFRecord reader goes through in
one evaluation, against the whole eval set:
  - before: every pipeline read all files in order and kept 1/8 of the
    records (`shard` after the read), so it read the whole set;
  - after: the pipeline reads only its own files (files i, i+8, ...;
    `classification_input.eval_reads_own_files` decides, as `build_dataset`
    does).
Both are measured by iterating the record stream the pipeline reads (bytes =
serialized records plus the 16 framing bytes of each TFRecord), not by
arithmetic. Per-file record counts (needed for the padded length) are taken
once per process and cached; that one-time count is not part of an
evaluation.

  python benchmarks/eval_read.py [--hosts 8] [--files 32]
"""
import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from official_ext.dataloaders import classification_input as ci  # pylint: disable=g-import-not-at-top
from official_ext.tools import make_fixture  # pylint: disable=g-import-not-at-top
from official_ext.vision.configs import image_classification as ic  # pylint: disable=g-import-not-at-top

_FRAMING = 16  # TFRecord: length (8) + length CRC (4) + data CRC (4).


def _read(dataset: tf.data.Dataset):
  """(records, bytes) that pass through the reader of `dataset`."""
  records, size = 0, 0
  for _, record in dataset:
    records += 1
    size += len(record.numpy()) + _FRAMING
  return records, size


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--hosts', type=int, default=8)
  parser.add_argument('--files', type=int, default=32)
  parser.add_argument('--examples_per_file', type=int, default=40)
  parser.add_argument('--global_batch', type=int, default=512)
  args = parser.parse_args(argv)
  hosts, num_files = args.hosts, args.files
  num_eval = num_files * args.examples_per_file
  with tempfile.TemporaryDirectory() as tmp:
    fx = make_fixture.make_fixture(
        os.path.join(tmp, 'fixture'), num_classes=10, num_train=1,
        num_eval=num_eval, image_size=32, num_shards=1, eval_shards=num_files,
        seed=0)
    params = ic.DataConfig(input_path=fx.eval_pattern, is_training=False,
                           global_batch_size=args.global_batch,
                           num_examples=num_eval)
    source = ci._make_source(params)  # pylint: disable=protected-access
    counts = source.record_counts()
    own = ci.eval_reads_own_files(counts, num_eval, args.global_batch, hosts)
    whole_bytes = sum(os.path.getsize(f) for f in source.file_names())
    print(f'eval set: {num_files} TFRecord files, {sum(counts)} records, '
          f'{whole_bytes} bytes; {hosts} input pipelines; global eval batch '
          f'{args.global_batch}; pipelines read only their own files: {own}')
    print(f'{"pipeline":>8} {"files":>5} | {"before: records":>15} '
          f'{"bytes":>9} {"of set":>6} | {"after: records":>14} {"bytes":>9} '
          f'{"of set":>6}')
    total_before = total_after = 0
    for i in range(hosts):
      # Before: the sharded stream reads every record of every file.
      before = _read(source.eval_records(1, 0, False))
      kept = _read(source.eval_records(hosts, i, False))
      after = _read(source.eval_records(hosts, i, own))
      assert kept[0] == len(range(i, sum(counts), hosts))
      total_before += before[1]
      total_after += after[1]
      print(f'{i:>8} {len(ci.eval_files(params, hosts, i)):>5} | '
            f'{before[0]:>15} {before[1]:>9} {before[1] / whole_bytes:>6.3f} | '
            f'{after[0]:>14} {after[1]:>9} {after[1] / whole_bytes:>6.3f}')
    print(f'all pipelines: before {total_before} bytes '
          f'({total_before / whole_bytes:.2f}x the set), after {total_after} '
          f'bytes ({total_after / whole_bytes:.2f}x the set)')


if __name__ == '__main__':
  main()
