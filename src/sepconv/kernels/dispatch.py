"""The one place where a call is offered to a fast kernel.

``sepconv.functional`` calls :func:`separable` and :func:`depthwise` on every
forward. Each returns the output when a fast kernel handles the call, or ``None``
so that the caller runs the PyTorch path. A kernel must never return a wrong
answer: anything it does not support returns ``None``.
"""

from __future__ import annotations

from torch import Tensor

from sepconv.functional.padding import PaddingPlan


def separable(
    x: Tensor,
    depthwise_weight: Tensor,
    pointwise_weight: Tensor,
    depthwise_bias: Tensor | None,
    pointwise_bias: Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    plan: PaddingPlan,
    padding_mode: str,
) -> Tensor | None:
    """Fused depthwise+pointwise forward of ``x`` ``(N, C, *spatial)``, or ``None`` to decline."""
    return None


def depthwise(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    plan: PaddingPlan,
    padding_mode: str,
) -> Tensor | None:
    """Depthwise forward of ``x`` ``(N, C, *spatial)`` with ``weight`` ``(C*M, 1, *kernel)``, or ``None``."""
    return None
