r"""Training input-pipeline throughput: official_ext vs Model Garden.

Both pipelines read the same JPEG TFRecord fixture (written by
`official_ext.tools.make_fixture`, ImageNet-like image sizes) and produce
training batches at the same output size with the same augmentation:
Inception random-resized crop (area 0.08-1, aspect 3/4-4/3, JPEG decoded
inside the crop window), random horizontal flip, bicubic resize, ImageNet
normalization, float32; no RandAugment (`--randaug M` turns it on for both).

  ours  official_ext.dataloaders.classification_input.build_dataset, with its
        default bad-record handling (on_bad_record='fail': the plain read ->
        decode -> batch, with in-graph checks of label and image in the
        decode map; a bad record is named by a re-scan after the failure).
        Its normalization subtracts and divides by whole-image constants:
        the same arithmetic as Model Garden's 3-vector broadcast, which runs
        on a slow unvectorized path (~850 against ~100 CPU-us per 224 px
        image); that is where its lead comes from.
  mg    Model Garden's official.core.input_reader.InputReader with
        official.vision.dataloaders.classification_input.Decoder and Parser
        (tf_resize_method='bicubic'), as Model Garden's image-classification
        task builds it. Its crop samples with min_object_covered equal to the
        lower area bound, the reference with min_object_covered 0.1 (so areas
        below 0.1 are rejected); crop_area_range=(0.1, 1.0) gives Model Garden
        the same effective crop distribution (and the same decode work).

Runs alternate (the order flips every round); each run builds a fresh
pipeline, skips `--warmup` batches (autotuning ramps up) and times
`--batches` batches. Reported: median images/s (wall clock), images/s per
core (wall / cores of the machine), images per CPU-second of this process
(less sensitive to other jobs on the machine), and the ratio ours / mg
(target >= 1.0x): the ratio of the medians and, because single runs on a
shared machine vary by +-15%, the median and quartiles of the ratios of the
two runs within each round (neighbours in time share the machine's state).

  python benchmarks/input_pipeline.py --rounds 16 --batches 64 --warmup 10
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from official.core import input_reader  # pylint: disable=g-import-not-at-top
from official.vision.configs import common
from official.vision.configs import image_classification as mg_ic
from official.vision.dataloaders import classification_input as mg_input
from official_ext.dataloaders import classification_input
from official_ext.tools import make_fixture
from official_ext.vision.configs import image_classification as exp_cfg


# See the module docstring: Model Garden's equivalent of the reference crop.
MG_CROP_AREA = (0.1, 1.0)


def _augmentation(randaug):
  if not randaug:
    return None
  return common.Augmentation(
      type='randaug',
      randaug=common.RandAugment(num_layers=2, magnitude=randaug))


def ours_dataset(pattern, args):
  params = exp_cfg.DataConfig(
      input_path=pattern, is_training=True,
      global_batch_size=args.batch_size, shuffle_buffer_size=args.shuffle,
      seed=1, aug_type=_augmentation(args.randaug))
  return classification_input.build_dataset(
      params, image_size=args.image_size, num_classes=args.num_classes)


def mg_dataset(pattern, args):
  params = mg_ic.DataConfig(
      input_path=pattern, is_training=True,
      global_batch_size=args.batch_size, shuffle_buffer_size=args.shuffle,
      seed=1, tf_resize_method='bicubic', crop_area_range=MG_CROP_AREA,
      aug_type=_augmentation(args.randaug))
  decoder = mg_input.Decoder()
  parser = mg_input.Parser(
      output_size=[args.image_size, args.image_size],
      num_classes=args.num_classes, aug_rand_hflip=True, aug_crop=True,
      aug_type=params.aug_type, tf_resize_method='bicubic',
      crop_area_range=MG_CROP_AREA)
  reader = input_reader.InputReader(
      params, dataset_fn=tf.data.TFRecordDataset,
      decoder_fn=decoder.decode, parser_fn=parser.parse_fn(True))
  return reader.read()


def time_run(make, pattern, args):
  """(images/s wall, images per CPU-second) of one fresh pipeline."""
  iterator = iter(make(pattern, args))
  for _ in range(args.warmup):
    next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(args.batches):
    images, _ = next(iterator)
  images.numpy()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  n = args.batches * args.batch_size
  return n / wall, n / max(cpu, 1e-9)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--source_height', type=int, default=320,
                 help='stored JPEG height (ImageNet-like)')
  p.add_argument('--source_width', type=int, default=400)
  p.add_argument('--records', type=int, default=512)
  p.add_argument('--shards', type=int, default=8)
  p.add_argument('--num_classes', type=int, default=10)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--batches', type=int, default=64)
  p.add_argument('--warmup', type=int, default=10)
  p.add_argument('--rounds', type=int, default=16)
  p.add_argument('--shuffle', type=int, default=256)
  p.add_argument('--randaug', type=float, default=0,
                 help='RandAugment magnitude for both (0: off)')
  p.add_argument('--fixture', default='',
                 help='existing fixture dir (default: write one to a tmp dir)')
  args = p.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    if args.fixture:
      fixture = make_fixture.load_fixture(args.fixture)
      if fixture is None:
        p.error(f'{args.fixture} is not a fixture directory')
    else:
      fixture = make_fixture.make_fixture(
          os.path.join(tmp, 'fixture'), num_classes=args.num_classes,
          num_train=args.records, num_eval=args.num_classes,
          image_size=args.source_height, image_width=args.source_width,
          num_shards=args.shards, eval_shards=1)
    pattern = fixture.train_pattern
    results = {'ours': [], 'mg': []}
    makers = {'ours': ours_dataset, 'mg': mg_dataset}
    for r in range(args.rounds):
      order = ('ours', 'mg') if r % 2 == 0 else ('mg', 'ours')
      for name in order:
        results[name].append(time_run(makers[name], pattern, args))
        print(f'round {r}: {name:4s} {results[name][-1][0]:7.1f} images/s '
              f'{results[name][-1][1]:7.1f} images/cpu-s', flush=True)

  cores = os.cpu_count() or 1
  med = {k: (statistics.median(w for w, _ in v),
             statistics.median(c for _, c in v)) for k, v in results.items()}
  print(f'\n{args.image_size} px training batches of {args.batch_size}, '
        f'{args.source_height}x{args.source_width} JPEGs, '
        f'RandAugment {"off" if not args.randaug else args.randaug}, '
        f'{cores} cores, median of {args.rounds} alternated runs:')
  for name, label in (('ours', 'official_ext'), ('mg', 'Model Garden')):
    wall, cpu = med[name]
    print(f'  {label:13s} {wall:7.1f} images/s  {wall / cores:6.1f} '
          f'images/s per core  {cpu:7.1f} images per CPU-second')
  print(f'  ratio ours/mg of the medians: {med["ours"][0] / med["mg"][0]:.2f}x '
        f'wall, {med["ours"][1] / med["mg"][1]:.2f}x per CPU-second '
        '(target >= 1.0x)')
  for i, unit in ((0, 'wall'), (1, 'per CPU-second')):
    low, mid, high = paired_ratio_quartiles(results['ours'], results['mg'], i)
    print(f'  ratio ours/mg within rounds, {unit}: median {mid:.3f}x, '
          f'quartiles {low:.3f}x-{high:.3f}x')


def paired_ratio_quartiles(ours, mg, index):
  """(Q1, median, Q3) of ours/mg per round (field `index` of each run)."""
  ratios = [a[index] / b[index] for a, b in zip(ours, mg)]
  if len(ratios) < 2:
    return ratios[0], ratios[0], ratios[0]
  low, mid, high = statistics.quantiles(ratios, n=4)
  return low, mid, high


if __name__ == '__main__':
  main()
