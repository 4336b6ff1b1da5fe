"""Conversion between dense and depthwise-separable networks.

- :func:`plan_separable` / :class:`Plan`: which convolutions become separable, at which rank
  (exact, ``rank=``, ``energy=`` or a MACs ``budget=``); printable and editable.
- :func:`to_separable`: apply a plan; weights from a per-input-channel SVD of each dense
  weight (the "DP" decomposition), optionally refit on calibration data.
- :func:`distill`: knowledge-distillation fine-tuning, single process or under torchrun.
- :func:`to_dense`: separable, depthwise and grouped convolutions back to dense ones (exact).
- :func:`fold_batchnorm`: fold BatchNorm into the preceding conv (exact in eval mode).

See ``docs/conversion.md``.
"""

from sepconv.conversion.decompose import Factors, factorize
from sepconv.conversion.dense import fold_batchnorm, to_dense
from sepconv.conversion.distill import DistillResult, distill, kd_loss
from sepconv.conversion.plan import LayerPlan, Plan, plan_separable
from sepconv.conversion.separable import build_separable, to_separable

__all__ = [
    "DistillResult",
    "Factors",
    "LayerPlan",
    "Plan",
    "build_separable",
    "distill",
    "factorize",
    "fold_batchnorm",
    "kd_loss",
    "plan_separable",
    "to_dense",
    "to_separable",
]
