"""Ready-made blocks: ``ConvNormAct``, ``DepthwiseSeparableBlock`` (MobileNetV1),
``InvertedResidual`` (MobileNetV2) and ``SqueezeExcite``.

Norm and activation layers are given as a class, a string (``"batchnorm"``, ``"relu6"``...),
a callable or an instance, as in the core layers (:func:`sepconv.create_norm`,
:func:`sepconv.create_act`); ``device`` and ``dtype`` reach every submodule.
"""

from sepconv.blocks.common import ConvNormAct, SqueezeExcite, make_divisible
from sepconv.blocks.mobilenet import DepthwiseSeparableBlock, InvertedResidual

__all__ = [
    "ConvNormAct",
    "DepthwiseSeparableBlock",
    "InvertedResidual",
    "SqueezeExcite",
    "make_divisible",
]
