"""Models: MobileNetV1 and MobileNetV2 (full size and for 32x32 / 8x8 inputs), and the demo's digits CNN.

Nothing is downloaded: models start from the reference initialisation, or from a state-dict
file passed as ``weights=``.
"""

from sepconv.models.digits import digits_cnn, evaluate, load_digits_split, train
from sepconv.models.mobilenet import (
    MobileNetV1,
    MobileNetV2,
    mobilenet_v1,
    mobilenet_v1_small,
    mobilenet_v2,
    mobilenet_v2_small,
)

__all__ = [
    "MobileNetV1",
    "MobileNetV2",
    "digits_cnn",
    "evaluate",
    "load_digits_split",
    "mobilenet_v1",
    "mobilenet_v1_small",
    "mobilenet_v2",
    "mobilenet_v2_small",
    "train",
]
