"""sepconv: depthwise-separable convolution for PyTorch.

Layers (``SeparableConv2d`` ...), a functional API (:mod:`sepconv.functional`),
a NumPy ground truth (:mod:`sepconv.reference`), cost formulas (:mod:`sepconv.cost`),
exact conversions (:mod:`sepconv.conversion`), cost analysis (:mod:`sepconv.analysis`),
fast CPU kernels (:mod:`sepconv.kernels`), blocks and models.
"""

from __future__ import annotations

import importlib
from typing import Any

from sepconv import cost, functional, reference
from sepconv.layers import *  # noqa: F403
from sepconv.layers import __all__ as _layer_names

__version__ = "0.1.0"

# Names that live in heavier subpackages, imported on first use so that
# ``import sepconv`` stays fast.
_LAZY = {
    "plan_separable": "sepconv.conversion",
    "to_separable": "sepconv.conversion",
    "to_dense": "sepconv.conversion",
    "fold_batchnorm": "sepconv.conversion",
    "distill": "sepconv.conversion",
    "Plan": "sepconv.conversion",
    "profile": "sepconv.analysis",
    "explain": "sepconv.analysis",
    "Report": "sepconv.analysis",
    "ModulatedSeparableConv2d": "sepconv.layers.modulated",
    "blocks": "sepconv.blocks",
    "models": "sepconv.models",
    "analysis": "sepconv.analysis",
    "conversion": "sepconv.conversion",
    "kernels": "sepconv.kernels",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sepconv' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"sepconv.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [*_layer_names, "cost", "functional", "reference", *_LAZY]
