"""Layers: depthwise, pointwise, separable (1d/2d/3d), transposed and spatially separable."""

from sepconv.layers.conv import (
    DepthwiseConv1d,
    DepthwiseConv2d,
    DepthwiseConv3d,
    PaddedConv1d,
    PaddedConv2d,
    PaddedConv3d,
    PointwiseConv1d,
    PointwiseConv2d,
    PointwiseConv3d,
)
from sepconv.layers.norm_act import create_act, create_norm
from sepconv.layers.separable import (
    SeparableConv1d,
    SeparableConv2d,
    SeparableConv3d,
    SeparableConvTranspose1d,
    SeparableConvTranspose2d,
    SeparableConvTranspose3d,
)
from sepconv.layers.spatial import SpatiallySeparableConv2d
from sepconv.layers.transpose import (
    DepthwiseConvTranspose1d,
    DepthwiseConvTranspose2d,
    DepthwiseConvTranspose3d,
)

__all__ = [
    "DepthwiseConv1d",
    "DepthwiseConv2d",
    "DepthwiseConv3d",
    "DepthwiseConvTranspose1d",
    "DepthwiseConvTranspose2d",
    "DepthwiseConvTranspose3d",
    "PaddedConv1d",
    "PaddedConv2d",
    "PaddedConv3d",
    "PointwiseConv1d",
    "PointwiseConv2d",
    "PointwiseConv3d",
    "SeparableConv1d",
    "SeparableConv2d",
    "SeparableConv3d",
    "SeparableConvTranspose1d",
    "SeparableConvTranspose2d",
    "SeparableConvTranspose3d",
    "SpatiallySeparableConv2d",
    "create_act",
    "create_norm",
]
