r"""Writes a small, learnable image-classification dataset in ImageNet's format.

  python -m official_ext.tools.make_fixture --out DIR --num_classes K \
      --train N --eval M --image_size S [--label_offset 0|1] \
      [--num_shards 4] [--eval_shards 2] [--tfds] [--tfds_name NAME] \
      [--seed 0] [--overwrite]

DIR receives Model Garden / ImageNet-style TFRecord shards of JPEG-encoded
tf.train.Examples (`image/encoded`, `image/class/label`, ...; written by
`official_ext.dataloaders.tfrecord_writer`, as the digits converter):

  DIR/train-00000-of-00004 ... DIR/validation-00000-of-00002 ...
  DIR/fixture.json                  what was written (counts, patterns, ...)
  DIR/tfds/NAME/1.0.0/...           with --tfds: the same examples (the same
                                    JPEG bytes, in the same order) as a TFDS
                                    build; read it with tfds_name=NAME,
                                    tfds_data_dir=DIR/tfds, splits train and
                                    validation.

Every image shows its class: a class colour, a class stripe pattern (one of
four orientations, at a class frequency), a random phase and brightness, and
pixel noise, so a small model learns the classes in a few hundred steps.
Stored labels are class + label_offset (label_offset 1 imitates ImageNet's
1-based TFRecords).

The directory is built under a temporary name and renamed into place; an
existing fixture directory is replaced only with --overwrite, and a non-empty
directory that is not a fixture is never touched. Bad arguments print one
`error:` line and exit with status 2.
"""
import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
from typing import List, Optional, Sequence

import numpy as np

MANIFEST = 'fixture.json'
FORMAT_VERSION = 1
DEFAULT_TFDS_NAME = 'effnet_fixture'
TFDS_VERSION = '1.0.0'
TRAIN_PREFIX = 'train'
EVAL_PREFIX = 'validation'
TFDS_SPLITS = {TRAIN_PREFIX: 'train', EVAL_PREFIX: 'validation'}


@dataclasses.dataclass(frozen=True)
class Fixture:
  """Where a fixture is and what it holds."""
  directory: str
  train_pattern: str
  eval_pattern: str
  num_train: int
  num_eval: int
  num_classes: int
  label_offset: int
  image_size: int
  tfds_name: str = ''
  tfds_data_dir: str = ''


# ----------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------


def _class_style(label: int, seed: int):
  rng = np.random.default_rng([seed, 7919, label])
  colour = rng.integers(40, 216, size=3).astype(np.float32)
  orientation = label % 4
  frequency = 2 + (label // 4) % 4
  return colour, orientation, frequency


def class_images(labels: Sequence[int], height: int, width: int,
                 seed: int = 0,
                 style_seed: Optional[int] = None) -> np.ndarray:
  """uint8 [N, height, width, 3] images whose content depends on the label.

  Class c (0-based) has its own colour (from `style_seed`, default `seed`)
  and stripe pattern (orientation c % 4, c // 4 % 4 + 2 periods per image);
  every image gets a random phase, brightness and per-pixel noise from
  `seed`. Splits of one dataset share the style seed, so that a class looks
  the same in all of them.
  """
  style_seed = seed if style_seed is None else style_seed
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.arange(height, dtype=np.float32) / height,
                       np.arange(width, dtype=np.float32) / width,
                       indexing='ij')
  coords = (xx, yy, (xx + yy) / 2, (xx - yy) / 2)
  out = np.empty((len(labels), height, width, 3), np.uint8)
  for i, label in enumerate(labels):
    colour, orientation, frequency = _class_style(int(label), style_seed)
    if orientation == 3:
      pattern = np.sign(np.sin(2 * np.pi * frequency * xx + rng.uniform(
          0, 2 * np.pi))) * np.sign(np.sin(2 * np.pi * frequency * yy))
    else:
      pattern = np.sin(2 * np.pi * frequency * coords[orientation] +
                       rng.uniform(0, 2 * np.pi))
    image = (colour[None, None, :] + 45.0 * pattern[..., None] +
             rng.uniform(-15, 15) + rng.normal(0, 10, (height, width, 3)))
    out[i] = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return out


def balanced_labels(num_examples: int, num_classes: int,
                    seed: int) -> np.ndarray:
  """Every class (nearly) equally often, in a seeded random order."""
  labels = np.arange(num_examples) % num_classes
  return np.random.default_rng([seed, 1]).permutation(labels)


# ----------------------------------------------------------------------------
# TFDS build.
# ----------------------------------------------------------------------------


def _read_examples(pattern: str):
  """(image/encoded bytes, label) of the TFRecords of `pattern`, in order."""
  import glob  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for path in sorted(glob.glob(pattern)):
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      feature = tf.train.Example.FromString(record).features.feature
      yield (feature['image/encoded'].bytes_list.value[0],
             int(feature['image/class/label'].int64_list.value[0]))


def _check_tfds_name(name: str) -> None:
  if not re.fullmatch(r'[a-z][a-z0-9_]*', name or ''):
    raise ValueError(
        f'tfds_name {name!r} must be snake_case: a lowercase letter, then '
        'lowercase letters, digits or _')


def write_tfds_build(split_patterns, data_dir: str, name: str,
                     num_labels: int, num_shards: Optional[int] = None) -> str:
  """Writes TFRecord splits as a TFDS dataset `name` in `data_dir`.

  Args:
    split_patterns: {tfds split name: TFRecord glob}; examples keep the
      order of the sorted files and their encoded image bytes.
    data_dir: TFDS data dir (created).
    name: dataset name (snake_case), usable as `tfds_name`.
    num_labels: ClassLabel size (largest stored label + 1).
    num_shards: files per split (default: TFDS's choice by size, one file
      for a small fixture).

  Returns:
    The directory of the build (`data_dir/name/1.0.0`).

  Works offline: a GeneratorBasedBuilder defined here, not registered, read
  back by `tfds.builder(name, data_dir=data_dir)` from its files.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _check_tfds_name(name)
  dataset_name = name

  class _FixtureBuilder(tfds.core.GeneratorBasedBuilder,
                        skip_registration=True):
    """The fixture's examples, unshuffled."""
    name = dataset_name
    VERSION = tfds.core.Version(TFDS_VERSION)
    RELEASE_NOTES = {TFDS_VERSION: 'official_ext make_fixture output.'}

    # tensorflow-datasets 4.9 resolves `code_path` through the
    # `importlib_resources` backport, which Python >= 3.9 installs lack; a
    # builder defined at run time has no code directory anyway.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # pylint: disable=no-self-argument
      return None

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description='Synthetic class-dependent images (official_ext '
          'make_fixture).',
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3),
                                           encoding_format='jpeg'),
              'label': tfds.features.ClassLabel(num_classes=num_labels),
          }),
          supervised_keys=('image', 'label'),
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(pattern)
              for split, pattern in split_patterns.items()}

    def _generate_examples(self, pattern):
      for index, (image, label) in enumerate(_read_examples(pattern)):
        yield index, {'image': image, 'label': label}

  builder = _FixtureBuilder(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP,
      num_shards=num_shards))
  # Nothing was downloaded: drop the empty download directories TFDS made.
  downloads = os.path.join(data_dir, 'downloads')
  if os.path.isdir(downloads) and not any(
      files for _, _, files in os.walk(downloads)):
    shutil.rmtree(downloads)
  return str(builder.data_dir)


# ----------------------------------------------------------------------------
# Fixture directory.
# ----------------------------------------------------------------------------


def load_fixture(directory: str) -> Optional[Fixture]:
  """The Fixture in `directory` if it holds a complete one, else None."""
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      manifest = json.load(f)
    fields = {f.name for f in dataclasses.fields(Fixture)}
    values = {k: v for k, v in manifest.items() if k in fields}
    values['directory'] = os.path.abspath(directory)
    for key in ('train_pattern', 'eval_pattern'):
      values[key] = os.path.join(values['directory'], manifest[key])
    if values.get('tfds_data_dir'):
      values['tfds_data_dir'] = os.path.join(values['directory'],
                                             manifest['tfds_data_dir'])
    return Fixture(**values)
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _check_args(num_classes, num_train, num_eval, image_size, image_width,
                label_offset, num_shards, eval_shards, jpeg_quality):
  def positive(name, value):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}')
  positive('num_classes', num_classes)
  positive('train', num_train)
  positive('eval', num_eval)
  positive('image_size', image_size)
  if image_width is not None:
    positive('image_width', image_width)
  positive('num_shards', num_shards)
  positive('eval_shards', eval_shards)
  if label_offset not in (0, 1):
    raise ValueError(f'label_offset must be 0 or 1, got {label_offset!r}')
  if num_shards > num_train:
    raise ValueError(
        f'num_shards={num_shards} exceeds the {num_train} train examples')
  if eval_shards > num_eval:
    raise ValueError(
        f'eval_shards={eval_shards} exceeds the {num_eval} eval examples')
  if not 1 <= jpeg_quality <= 100:
    raise ValueError(f'jpeg_quality must be in [1, 100], got {jpeg_quality}')


def _prepare_out(out: str, overwrite: bool) -> None:
  """Refuses to replace anything but an existing fixture (with overwrite)."""
  if os.path.lexists(out) and not os.path.isdir(out):
    raise ValueError(f'--out {out!r} exists and is not a directory')
  if not os.path.isdir(out) or not os.listdir(out):
    return
  if not os.path.exists(os.path.join(out, MANIFEST)):
    raise ValueError(
        f'--out {out!r} is a non-empty directory that is not a fixture (no '
        f'{MANIFEST}); refusing to touch it')
  if not overwrite:
    raise ValueError(
        f'fixture directory {out!r} already exists; pass --overwrite to '
        'replace it')


def make_fixture(out: str, num_classes: int, num_train: int, num_eval: int,
                 image_size: int, label_offset: int = 0,
                 num_shards: Optional[int] = None,
                 eval_shards: Optional[int] = None, tfds: bool = False,
                 tfds_name: str = DEFAULT_TFDS_NAME, overwrite: bool = False,
                 seed: int = 0, image_width: Optional[int] = None,
                 jpeg_quality: int = 90) -> Fixture:
  """Writes the fixture into `out` (see module docstring); returns it.

  Images are image_size x (image_width or image_size). num_shards and
  eval_shards default to min(4, num_train) and min(2, num_eval). Raises
  ValueError for bad arguments or an existing fixture without overwrite.
  """
  if num_shards is None and isinstance(num_train, int):
    num_shards = max(1, min(4, num_train))
  if eval_shards is None and isinstance(num_eval, int):
    eval_shards = max(1, min(2, num_eval))
  _check_args(num_classes, num_train, num_eval, image_size, image_width,
              label_offset, num_shards, eval_shards, jpeg_quality)
  if tfds:
    _check_tfds_name(tfds_name)
  out = os.path.abspath(os.path.expanduser(out))
  _prepare_out(out, overwrite)
  # After the argument checks: bad arguments fail without importing TF.
  from official_ext.dataloaders import tfrecord_writer  # pylint: disable=g-import-not-at-top
  with tfrecord_writer.staging_directory(out) as temp:
    width = image_width or image_size
    manifest = {
        'format_version': FORMAT_VERSION,
        'num_classes': num_classes,
        'label_offset': label_offset,
        'image_size': image_size,
        'image_width': width,
        'num_train': num_train,
        'num_eval': num_eval,
        'seed': seed,
    }
    for prefix, count, shards, split_seed in (
        (TRAIN_PREFIX, num_train, num_shards, 2 * seed),
        (EVAL_PREFIX, num_eval, eval_shards, 2 * seed + 1)):
      labels = balanced_labels(count, num_classes, split_seed)
      # The class colours come from the fixture's seed: the same in both
      # splits (the examples' noise comes from the split's seed).
      images = class_images(labels, image_size, width, seed=split_seed,
                            style_seed=seed)
      tfrecord_writer.write_image_classification_records(
          os.path.join(temp, prefix), images, labels + label_offset,
          num_shards=shards, image_format='jpeg', jpeg_quality=jpeg_quality,
          suffix='')
      key = 'train_pattern' if prefix == TRAIN_PREFIX else 'eval_pattern'
      manifest[key] = f'{prefix}-*-of-{shards:05d}'
    manifest['tfds_name'] = ''
    manifest['tfds_data_dir'] = ''
    if tfds:
      write_tfds_build(
          {TFDS_SPLITS[TRAIN_PREFIX]: os.path.join(temp,
                                                   manifest['train_pattern']),
           TFDS_SPLITS[EVAL_PREFIX]: os.path.join(temp,
                                                  manifest['eval_pattern'])},
          os.path.join(temp, 'tfds'), tfds_name, num_classes + label_offset)
      manifest['tfds_name'] = tfds_name
      manifest['tfds_data_dir'] = 'tfds'
    with open(os.path.join(temp, MANIFEST), 'w') as f:
      json.dump(manifest, f, indent=2)
    if os.path.isdir(out):
      _prepare_out(out, overwrite)  # Re-check just before replacing.
      shutil.rmtree(out)
    os.rename(temp, out)
  fixture = load_fixture(out)
  if fixture is None:
    raise OSError(f'fixture in {out} is incomplete after writing')
  return fixture


# ----------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(
      prog='python -m official_ext.tools.make_fixture',
      description='Write a learnable JPEG TFRecord fixture in ImageNet format.')
  p.add_argument('--out', required=True, help='fixture directory')
  p.add_argument('--num_classes', type=int, required=True)
  p.add_argument('--train', type=int, required=True,
                 help='number of training examples')
  p.add_argument('--eval', type=int, required=True,
                 help='number of validation examples')
  p.add_argument('--image_size', type=int, required=True,
                 help='image height (and width unless --image_width)')
  p.add_argument('--image_width', type=int, default=None)
  p.add_argument('--label_offset', type=int, default=0, choices=(0, 1),
                 help='stored label = class + label_offset')
  p.add_argument('--num_shards', type=int, default=None,
                 help='training files (default min(4, --train))')
  p.add_argument('--eval_shards', type=int, default=None,
                 help='validation files (default min(2, --eval))')
  p.add_argument('--tfds', action='store_true',
                 help='also write the examples as a TFDS build in OUT/tfds')
  p.add_argument('--tfds_name', default=DEFAULT_TFDS_NAME)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--jpeg_quality', type=int, default=90)
  p.add_argument('--overwrite', action='store_true',
                 help='replace an existing fixture directory')
  return p


def main(argv: Optional[List[str]] = None) -> int:
  args = _parser().parse_args(argv)
  if args.tfds:
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top
    tensorflow_datasets.disable_progress_bar()
  try:
    fixture = make_fixture(
        args.out, num_classes=args.num_classes, num_train=args.train,
        num_eval=args.eval, image_size=args.image_size,
        image_width=args.image_width, label_offset=args.label_offset,
        num_shards=args.num_shards, eval_shards=args.eval_shards,
        tfds=args.tfds, tfds_name=args.tfds_name, overwrite=args.overwrite,
        seed=args.seed, jpeg_quality=args.jpeg_quality)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {fixture.num_train} train and {fixture.num_eval} validation '
        f'examples ({fixture.num_classes} classes, label_offset '
        f'{fixture.label_offset}) to {fixture.directory}')
  print(f'  train input_path: {fixture.train_pattern}')
  print(f'  eval input_path:  {fixture.eval_pattern}')
  if fixture.tfds_name:
    print(f'  TFDS: tfds_name={fixture.tfds_name} '
          f'tfds_data_dir={fixture.tfds_data_dir} (splits train, validation)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
