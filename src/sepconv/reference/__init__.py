"""NumPy reference implementations, the ground truth of the tests (see :mod:`sepconv.reference.conv`)."""

from sepconv.reference.conv import (
    batch_norm_inference,
    conv,
    conv_transpose,
    depthwise_conv,
    padding_pairs,
    separable_conv,
)

__all__ = [
    "batch_norm_inference",
    "conv",
    "conv_transpose",
    "depthwise_conv",
    "padding_pairs",
    "separable_conv",
]
