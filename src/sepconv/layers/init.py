"""Weight initialisation that gives each conv stage its own, correct fan-in.

PyTorch's default for ``nn.ConvNd`` is ``kaiming_uniform_(a=sqrt(5))``, i.e.
``Var(w) = 1 / (3 * fan_in)``: each conv stage shrinks the signal's variance
about 3x, so a depthwise+pointwise pair shrinks it about 9x. Here every stage
draws ``w ~ U(-b, b)`` with ``b = sqrt(3 / fan_in)`` (``Var(w) = 1 / fan_in``), where
``fan_in`` counts the inputs one output of *that* stage reads: ``prod(kernel)``
for a depthwise stage, ``C*M/G`` for a pointwise one. Unit-variance inputs then
give roughly unit-variance outputs through the whole separable layer. Biases start at 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_fan_in(
    in_per_group: int, kernel_size: tuple[int, ...], stride: tuple[int, ...] = ()
) -> int:
    """Inputs that one output of a conv reads: ``in_per_group * prod(kernel_size)``.

    For a transposed conv pass its ``stride``: each output then reads only about
    ``prod(kernel_size) / prod(stride)`` positions.
    """
    receptive = math.prod(kernel_size) // max(1, math.prod(stride) if stride else 1)
    return in_per_group * max(1, receptive)


@torch.no_grad()
def variance_preserving_(weight: torch.Tensor, bias: torch.Tensor | None, fan_in: int) -> None:
    """In place: ``weight ~ U(-sqrt(3/fan_in), sqrt(3/fan_in))``, ``bias = 0``."""
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.zeros_(bias)
