"""The embedded default: EfficientNet-B0 on scikit-learn's handwritten digits.

Real data that ships with scikit-learn (1,797 8x8 images, 10 classes),
converted on first use to Model Garden TFRecords and read through the project's
pipeline; 4 logical CPU replicas under MirroredStrategy; the paper's LARS with
warmup and polynomial decay; evaluations interleaved with training.
"""
from experiments import recipe_builder
from official_ext.core import experiment_list
from official_ext.dataloaders import digits

DIGITS_DEMO = recipe_builder.Recipe(
    model_id='b0',
    image_size=32,
    num_classes=10,
    train_examples=digits.DIGITS_TRAIN_EXAMPLES,
    eval_examples=digits.DIGITS_EVAL_EXAMPLES,
    embedded_dataset='digits',
    global_batch_size=128,
    eval_batch_size=128,
    optimizer='lars',
    lr_per_256=2.0,
    warmup_epochs=5,
    end_learning_rate=0.0,
    train_epochs=30,
    eval_every_epochs=5,
    steps_per_loop=10,
    num_cpu_replicas=4,
    precision='float32',
    # ~340 steps in all: with the paper's 0.99 the moving BN statistics would
    # still be dominated by their initial values at the early evaluations.
    bn_momentum=0.9,
    # Digits are not mirror-symmetric and too small for aggressive crops.
    aug_rand_hflip=False,
    crop_area_range=(0.6, 1.0),
    eval_crop_padding=0,
)

experiment_list.register_experiment(
    'effnet_b0_digits', lambda: recipe_builder.build_experiment(DIGITS_DEMO))
