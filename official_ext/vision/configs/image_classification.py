"""Experiment config for EfficientNet image classification at scale.

Extends Model Garden's image-classification config (subclassing its
dataclasses) with what the paper's recipe needs: dataset sizes so that epochs
become steps, epoch-based training and eval cadence, logical CPU replicas, and
the per-256-scaled optimization configs.
"""
import dataclasses
from typing import List, Optional, Tuple

from official.core import config_definitions as cfg
from official.vision.configs import common
from official.vision.configs import image_classification as mg_ic

from official_ext.modeling import initializers
from official_ext.modeling.optimization import configs as opt_configs
from official_ext.vision.configs import backbones

IMAGENET_TRAIN_EXAMPLES = 1281167
IMAGENET_EVAL_EXAMPLES = 50000
IMAGENET_NUM_CLASSES = 1000
PRECISIONS = ('float32', 'bfloat16', 'conv_bfloat16', 'float16')


@dataclasses.dataclass
class DataConfig(mg_ic.DataConfig):
  """Input config.

  Attributes beyond Model Garden's:
    num_examples: examples in the split; turns epochs into steps and sizes the
      padding of exact evaluation.
    crop_aspect_ratio_range: aspect bounds of the random-resized crop.
    eval_crop_padding: center crop keeps image_size / (image_size + padding)
      of the shorter side (32 in the reference code).
    resize_method: 'bicubic' (reference) or 'bilinear'.
    resize_half_pixel_centers: False (default): the reference's TF1 resize
      convention (`tf.compat.v1.image.resize_bicubic`, no half-pixel
      centers), so eval images equal the reference's; True:
      `tf.image.resize`'s half-pixel centers.
    label_offset: subtracted from stored labels (1 for 1-based ImageNet), for
      TFRecords and TFDS alike; None: the ImageNet convention of the source,
      1 for TFRecords (`imagenet_to_gcs.py`, Model Garden: 1..1000) and 0 for
      TFDS (`imagenet2012`: 0..999).
    on_bad_record: 'fail' (default): a record that cannot be parsed, has no
      label or image, whose image cannot be decoded or whose label is out of
      range stops training with an error naming its file and record index;
      'skip': such records are dropped and each is logged with a running
      count.
    tfds_image_key, tfds_label_key: features read from a TFDS dataset
      (`tfds_name`, `tfds_split`, `tfds_data_dir`).
    embedded_dataset: name of a dataset the project materializes itself on
      first use ('digits'); it then supplies input_path.
  """
  num_examples: int = 0
  embedded_dataset: str = ''
  crop_aspect_ratio_range: Tuple[float, float] = (3. / 4., 4. / 3.)
  eval_crop_padding: int = 32
  resize_method: str = 'bicubic'
  resize_half_pixel_centers: bool = False
  label_offset: Optional[int] = 0
  on_bad_record: str = 'fail'
  tfds_image_key: str = 'image'
  tfds_label_key: str = 'label'


@dataclasses.dataclass
class NormActivation(common.NormActivation):
  """Norm/activation settings.

  bn_group_rule: how many replicas reduce batch-norm statistics together
    (official_ext.modeling.layers.bn_group_rules): 'fixed' (bn_group_size or
    bn_batch_size, as given), 'distributed_batch_norm' (the reference's LARS
    runs: all replicas up to 8, else BN batch bn_batch_size, default 128) or
    'tpu_batch_norm' (its RMSProp runs: per-replica up to 8, else
    max(8, replicas // 8)).
  bn_group_size: replicas per BN group (1 = local BN, all replicas = fully
    synchronized). Derived from the replica count unless the rule is 'fixed'
    and bn_batch_size is 0; 0 means "not resolved yet" (the replica count is
    known only at run time, e.g. MultiWorkerMirroredStrategy).
  bn_batch_size: the BN batch (per-replica batch x group size), as the
    reference code's `batch_norm_batch_size` flag; with 'fixed', if > 0 it
    sets bn_group_size.
  bn_group_layout: which replicas form a group
    (official_ext.modeling.layers.group_assignment): 'auto' (contiguous ids
    up to 16 replicas per group, 2-D chip tiles past 16 on a TPU slice),
    'contiguous', or 'tiles' (MLPerf's chip tiles at every size).
  device_mesh, cores_per_chip: derived from the runtime config; the chip
    mesh for tiles outside TPUStrategy (which reads its device assignment).
  """
  activation: str = 'swish'
  use_sync_bn: bool = False
  norm_momentum: float = 0.99
  norm_epsilon: float = 1e-3
  bn_group_rule: str = 'fixed'
  bn_group_size: int = 1
  bn_batch_size: int = 0
  bn_group_layout: str = 'auto'
  device_mesh: List[int] = dataclasses.field(default_factory=list)
  cores_per_chip: int = 2


@dataclasses.dataclass
class ImageClassificationModel(mg_ic.ImageClassificationModel):
  """`kernel_initializer` of the classifier defaults to the reference's
  U(+-1/sqrt(num_classes)) (`official_ext.modeling.initializers`)."""
  num_classes: int = IMAGENET_NUM_CLASSES
  input_size: List[int] = dataclasses.field(
      default_factory=lambda: [224, 224, 3])
  backbone: backbones.Backbone = dataclasses.field(
      default_factory=lambda: backbones.Backbone(
          type='paper_efficientnet',
          paper_efficientnet=backbones.PaperEfficientNet()))
  dropout_rate: float = 0.2
  norm_activation: NormActivation = dataclasses.field(
      default_factory=NormActivation)
  kernel_initializer: str = initializers.DENSE_HEAD_INITIALIZER


@dataclasses.dataclass
class Losses(mg_ic.Losses):
  """`weight_decay` is the reference code's L2 term over non-BN variables."""
  label_smoothing: float = 0.1
  weight_decay: float = 1e-5


@dataclasses.dataclass
class ImageClassificationTask(mg_ic.ImageClassificationTask):
  model: ImageClassificationModel = dataclasses.field(
      default_factory=ImageClassificationModel)
  train_data: DataConfig = dataclasses.field(
      default_factory=lambda: DataConfig(is_training=True))
  validation_data: DataConfig = dataclasses.field(
      default_factory=lambda: DataConfig(is_training=False))
  losses: Losses = dataclasses.field(default_factory=Losses)


@dataclasses.dataclass
class TrainerConfig(cfg.TrainerConfig):
  """Trainer config whose length and eval cadence are given in epochs.

  `train_steps`, `validation_interval`, `validation_steps` and
  `checkpoint_interval` are derived from these by official_ext.core.recipe.
  """
  optimizer_config: opt_configs.OptimizationConfig = dataclasses.field(
      default_factory=opt_configs.OptimizationConfig)
  train_epochs: float = 350.0
  eval_every_epochs: float = 4.0
  # Evaluation reads the padded eval set to its end (exact metrics).
  validation_steps: int = -1
  # A tf.while_loop eval can be built before the time-to-accuracy clock
  # starts (official_ext.core.timed_trainer); a Python loop traces lazily.
  eval_tf_while_loop: bool = True
  # The best checkpoint by eval top-1 is kept apart from the rolling ones.
  best_checkpoint_export_subdir: str = 'best_checkpoint'
  best_checkpoint_eval_metric: str = 'top_1_accuracy'
  # Divergence stops the run (official_ext.core.divergence) instead of
  # Model Garden's recovery condition.
  recovery_max_trials: int = -1


@dataclasses.dataclass
class RuntimeConfig(cfg.RuntimeConfig):
  """Runtime config.

  mixed_precision_dtype: 'float32'; 'bfloat16' (Model Garden's global
    mixed_bfloat16 policy: every layer); 'conv_bfloat16' (the paper: main-path
    convolutions in bfloat16, everything else float32); 'float16'.
  num_cpu_replicas: if > 0, split the host CPU into this many logical devices
    and train with MirroredStrategy over them (N replicas on one CPU host).
  tpu_cores: TPU cores of the slice the experiment runs on (Table 2's for
    the paper rows); under TPUStrategy the live slice must have exactly this
    many cores (or tpu_cores is 0: any slice); batch-derived fields and BN
    groups are resolved for it.
  device_mesh: [chips along x, chips along y] of the device mesh, for 2-D
    tiled BN groups outside TPUStrategy (which reads its device assignment;
    config resolution checks TPU groups against the standard TPU-v3 slice
    meshes), e.g. [16, 32] for 1024 TPU-v3 cores; replica ids advance along
    x fastest.
  cores_per_chip: cores (replicas) per chip of that mesh; 2 on TPU-v3.
  tpu_connect_timeout_s: how long to wait for the TPU's address to answer
    before stopping with an error.
  """
  num_cpu_replicas: int = 0
  tpu_cores: int = 0
  device_mesh: List[int] = dataclasses.field(default_factory=list)
  cores_per_chip: int = 2
  tpu_connect_timeout_s: float = 60.0
  mixed_precision_dtype: Optional[str] = 'float32'


@dataclasses.dataclass
class ExperimentConfig(cfg.ExperimentConfig):
  task: ImageClassificationTask = dataclasses.field(
      default_factory=ImageClassificationTask)
  trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
  runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
