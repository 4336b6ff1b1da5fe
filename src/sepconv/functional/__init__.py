"""Functional API: convolutions whose weights the caller owns (computed or rescaled per call).

Shapes, for rank ``n`` (1, 2, 3):

- input ``x``: ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``
- depthwise weight: ``(C*M, 1, *kernel)``; output channel ``c*M + m`` is filter ``m`` of input channel ``c``
- pointwise weight: ``(O, C*M/G, 1, ..., 1)`` (or flat ``(O, C*M/G)``), ``G`` pointwise groups (inferred)

``padding`` is an int, a tuple, ``"valid"``, ``"same"`` (TensorFlow rules, any stride) or
``"causal"`` (1d). ``padding_mode`` is ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor

from sepconv.functional.conv import depthwise_conv, separable_conv
from sepconv.functional.modulated import modulated_separable_conv2d
from sepconv.functional.padding import PaddingPlan, resolve_padding, same_pad_amounts


def _ranked(fn: Callable[..., Tensor], rank: int) -> Callable[..., Tensor]:
    """Make ``fn`` with ``rank`` bound a named public function with its own docstring."""
    kind = fn.__name__.split("_")[0]
    dims = {1: "L", 2: "H, W", 3: "D, H, W"}[rank]

    def ranked(*args, **kwargs) -> Tensor:
        return fn(*args, rank=rank, **kwargs)

    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "rank"]
    ranked.__signature__ = inspect.Signature(params, return_annotation=Tensor)  # type: ignore[attr-defined]
    ranked.__name__ = ranked.__qualname__ = f"{fn.__name__}{rank}d"
    ranked.__module__ = __name__
    ranked.__doc__ = (
        f"{kind.capitalize()} {rank}d convolution: ``x`` ``(N, C, {dims})`` -> "
        f"``(N, {'C*M' if kind == 'depthwise' else 'O'}, {dims} out)``.\n"
        + (fn.__doc__ or "").split("\n", 1)[-1]
    )
    return ranked


depthwise_conv1d = _ranked(depthwise_conv, 1)
depthwise_conv2d = _ranked(depthwise_conv, 2)
depthwise_conv3d = _ranked(depthwise_conv, 3)
separable_conv1d = _ranked(separable_conv, 1)
separable_conv2d = _ranked(separable_conv, 2)
separable_conv3d = _ranked(separable_conv, 3)

__all__ = [
    "PaddingPlan",
    "depthwise_conv",
    "depthwise_conv1d",
    "depthwise_conv2d",
    "depthwise_conv3d",
    "modulated_separable_conv2d",
    "resolve_padding",
    "same_pad_amounts",
    "separable_conv",
    "separable_conv1d",
    "separable_conv2d",
    "separable_conv3d",
]
