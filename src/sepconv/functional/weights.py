"""Exact weight algebra between grouped, depthwise, separable and dense convolutions.

Shapes use ``C`` input channels, ``M`` depth multiplier, ``O`` output channels,
``G`` groups and ``K`` for the kernel dims ``*kernel``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_groups(weight: Tensor, groups: int) -> Tensor:
    """Block-diagonal dense weight of a grouped conv.

    ``weight`` ``(O, C/G, *K)`` with ``groups=G`` -> ``(O, C, *K)``, zero where an output
    channel does not read an input channel. Output channel ``o`` of group ``o // (O/G)``
    reads input channels ``g*C/G ... (g+1)*C/G - 1``.
    """
    out_channels, in_per_group = weight.shape[:2]
    out_per_group = out_channels // groups
    full = weight.new_zeros(out_channels, in_per_group * groups, *weight.shape[2:])
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        full[rows, g * in_per_group : (g + 1) * in_per_group] = weight[rows]
    return full


def take_groups(full: Tensor, groups: int) -> Tensor:
    """Inverse of :func:`expand_groups`: ``(O, C, *K)`` -> ``(O, C/G, *K)`` (off-block entries dropped)."""
    out_channels, in_channels = full.shape[:2]
    out_per_group, in_per_group = out_channels // groups, in_channels // groups
    blocks = [
        full[g * out_per_group : (g + 1) * out_per_group, g * in_per_group : (g + 1) * in_per_group]
        for g in range(groups)
    ]
    return torch.cat(blocks, dim=0)


def separable_to_dense(
    depthwise_weight: Tensor,
    pointwise_weight: Tensor,
    depthwise_bias: Tensor | None = None,
    pointwise_bias: Tensor | None = None,
    *,
    in_channels: int,
) -> tuple[Tensor, Tensor | None, int]:
    """One conv equal to depthwise then pointwise (nothing between them).

    Args:
        depthwise_weight: ``(C*M, 1, *K)``.
        pointwise_weight: ``(O, C*M/G, 1, ..., 1)`` (``G`` pointwise groups).
        depthwise_bias: ``(C*M,)`` or None; pointwise_bias: ``(O,)`` or None.
        in_channels: ``C`` (the depthwise weight alone cannot tell ``C`` from ``M``).

    Returns:
        ``(weight, bias, groups)``: ``weight`` ``(O, C/groups, *K)``,
        ``W[o, c] = sum_m P[o, c*M + m] * D[c*M + m]`` and ``b = b_P + P @ b_D``.
        ``groups`` is ``G`` when each pointwise group covers whole input channels, else 1.
    """
    mid, spatial = depthwise_weight.shape[0], depthwise_weight.shape[2:]
    out_channels = pointwise_weight.shape[0]
    pw_groups = mid // pointwise_weight.shape[1]
    pointwise = expand_groups(pointwise_weight.reshape(out_channels, -1, 1), pw_groups).reshape(
        out_channels, mid
    )
    channels, mult = in_channels, mid // in_channels
    dense = torch.einsum(
        "ocm,cmk->ock",
        pointwise.reshape(out_channels, channels, mult),
        depthwise_weight.reshape(channels, mult, -1),
    ).reshape(out_channels, channels, *spatial)
    bias = pointwise_bias
    if depthwise_bias is not None:
        carried = pointwise @ depthwise_bias
        bias = carried if bias is None else bias + carried
    groups = pw_groups if (mid // pw_groups) % mult == 0 else 1
    return take_groups(dense, groups), bias, groups


def depthwise_to_dense(weight: Tensor, in_channels: int) -> Tensor:
    """Dense ``(C*M, C, *K)`` weight equal to a depthwise ``(C*M, 1, *K)`` one (block diagonal)."""
    return expand_groups(weight, in_channels)
