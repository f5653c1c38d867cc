"""EfficientNet B0-B7 training defaults (image size, dropout) of the reference code."""
import dataclasses


@dataclasses.dataclass(frozen=True)
class EfficientNetVariant:
  image_size: int
  dropout_rate: float


EFFICIENTNET_VARIANTS = {
    'b0': EfficientNetVariant(224, 0.2),
    'b1': EfficientNetVariant(240, 0.2),
    'b2': EfficientNetVariant(260, 0.3),
    'b3': EfficientNetVariant(300, 0.3),
    'b4': EfficientNetVariant(380, 0.4),
    'b5': EfficientNetVariant(456, 0.4),
    'b6': EfficientNetVariant(528, 0.5),
    'b7': EfficientNetVariant(600, 0.5),
}
STOCHASTIC_DEPTH_DROP_RATE = 0.2
SE_RATIO = 0.25
