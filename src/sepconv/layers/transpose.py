"""Depthwise transposed convolutions (``nn.ConvTransposeNd`` with ``groups = in_channels``).

Weight ``(C, M, *kernel)``: output channel ``c*M + m`` is filter ``m`` of input channel ``c``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sepconv import _validation as check
from sepconv.layers.init import conv_fan_in, variance_preserving_


class _DepthwiseTransposeMixin:
    """Depthwise transposed conv; shapes ``(N, C, *spatial) -> (N, C*M, *spatial_out)``.

    ``spatial_out = (spatial - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1``.
    ``padding`` is an int or a tuple (transposed convs take no padding strings);
    ``output_padding`` must be smaller than ``stride`` or ``dilation`` in each dim.
    """

    _rank: int
    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self,
        in_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        output_padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        depth_multiplier: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        rank = self._rank
        check.positive_int(in_channels, "in_channels")
        check.positive_int(depth_multiplier, "depth_multiplier")
        kernel_t = check.int_tuple(kernel_size, rank, "kernel_size")
        stride_t = check.int_tuple(stride, rank, "stride")
        dilation_t = check.int_tuple(dilation, rank, "dilation")
        if isinstance(padding, str):
            raise ValueError(
                f"padding of a transposed conv must be an int or a tuple of ints, got {padding!r}"
            )
        padding_t = check.int_tuple(padding, rank, "padding", minimum=0)
        output_padding_t = check.int_tuple(output_padding, rank, "output_padding", minimum=0)
        for op, s, d in zip(output_padding_t, stride_t, dilation_t):
            if op >= max(s, d):
                raise ValueError(
                    f"output_padding must be smaller than stride or dilation, got output_padding="
                    f"{output_padding!r} with stride={stride!r}, dilation={dilation!r}"
                )
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {bias!r}")
        super().__init__(  # type: ignore[call-arg]
            in_channels,
            in_channels * depth_multiplier,
            kernel_t,
            stride_t,
            padding_t,
            output_padding_t,
            in_channels,
            bias,
            dilation_t,
            "zeros",
            device=device,
            dtype=dtype,
        )
        self.depth_multiplier = depth_multiplier

    def reset_parameters(self) -> None:
        """Variance-preserving init; an output reads about ``prod(kernel)/prod(stride)`` inputs."""
        fan_in = conv_fan_in(1, tuple(self.weight.shape[2:]), tuple(self.stride))  # type: ignore[attr-defined]
        variance_preserving_(self.weight, self.bias, fan_in)

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        """``(N, C, *spatial) -> (N, C*M, *spatial_out)``."""
        self._batched(input)
        return super().forward(input, output_size)  # type: ignore[misc]

    def _batched(self, input: Tensor) -> Tensor:
        """Check ``input`` and return it with a batch dim (taken as batched under ``torch.fx``)."""
        if check.is_fx_tracing():
            return input
        check.check_input(input, self._rank, self.in_channels)  # type: ignore[attr-defined]
        return input if input.dim() == self._rank + 2 else input.unsqueeze(0)


class DepthwiseConvTranspose1d(_DepthwiseTransposeMixin, nn.ConvTranspose1d):
    __doc__ = _DepthwiseTransposeMixin.__doc__
    _rank = 1


class DepthwiseConvTranspose2d(_DepthwiseTransposeMixin, nn.ConvTranspose2d):
    __doc__ = _DepthwiseTransposeMixin.__doc__
    _rank = 2


class DepthwiseConvTranspose3d(_DepthwiseTransposeMixin, nn.ConvTranspose3d):
    __doc__ = _DepthwiseTransposeMixin.__doc__
    _rank = 3
