"""Spatially separable convolution: a ``(k, 1)`` conv followed by a ``(1, k)`` conv."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sepconv import _validation as check
from sepconv.functional.padding import PaddingSpec
from sepconv.layers.conv import PaddedConv2d


class SpatiallySeparableConv2d(nn.Module):
    """A ``(kH, 1)`` conv (``.vertical``) then a ``(1, kW)`` conv (``.horizontal``).

    A ``kH x kW`` filter of rank one costs ``kH + kW`` instead of ``kH * kW`` weights per
    channel pair (Inception v3's factorisation).

    Args:
        in_channels, out_channels: channels in and out.
        kernel_size: ``k`` or ``(kH, kW)``.
        stride, dilation: int or ``(sH, sW)``; the height part goes to the vertical stage,
            the width part to the horizontal one.
        padding: int, ``(pH, pW)``, ``"valid"`` or ``"same"``; each stage pads its own axis.
        mid_channels: outputs of the vertical stage (default ``out_channels``).
        depthwise: if True both stages are depthwise (``groups`` = their input channels);
            then ``mid_channels`` and ``out_channels`` must be multiples of ``in_channels``.
        bias: a bias on each stage.

    Shapes: ``(N, C, H, W) -> (N, mid, H', W) -> (N, O, H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: PaddingSpec = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        mid_channels: int | None = None,
        depthwise: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check.positive_int(in_channels, "in_channels")
        check.positive_int(out_channels, "out_channels")
        mid = (
            out_channels
            if mid_channels is None
            else check.positive_int(mid_channels, "mid_channels")
        )
        (kh, kw), (sh, sw), (dh, dw) = (
            check.int_tuple(kernel_size, 2, "kernel_size"),
            check.int_tuple(stride, 2, "stride"),
            check.int_tuple(dilation, 2, "dilation"),
        )
        pad_v, pad_h = _split_padding(padding)
        common = dict(bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        self.vertical = PaddedConv2d(
            in_channels,
            mid,
            (kh, 1),
            (sh, 1),
            pad_v,
            (dh, 1),
            groups=in_channels if depthwise else 1,
            **common,
        )
        self.horizontal = PaddedConv2d(
            mid,
            out_channels,
            (1, kw),
            (1, sw),
            pad_h,
            (1, dw),
            groups=mid if depthwise else 1,
            **common,
        )

    in_channels = property(lambda self: self.vertical.in_channels)
    out_channels = property(lambda self: self.horizontal.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, O, H', W')``; unbatched ``(C, H, W)`` too."""
        return self.horizontal(self.vertical(x))


def _split_padding(padding: PaddingSpec) -> tuple[PaddingSpec, PaddingSpec]:
    """Padding of the vertical and horizontal stages from a 2d padding spec."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        return padding, padding
    ph, pw = check.int_tuple(padding, 2, "padding", minimum=0)
    return (ph, 0), (0, pw)
