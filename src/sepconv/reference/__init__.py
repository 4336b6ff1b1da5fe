"""NumPy reference implementations, the ground truth of the tests (see :mod:`sepconv.reference.conv`)."""

from sepconv.reference.conv import (
    conv,
    conv_transpose,
    depthwise_conv,
    padding_pairs,
    separable_conv,
)

__all__ = ["conv", "conv_transpose", "depthwise_conv", "padding_pairs", "separable_conv"]
