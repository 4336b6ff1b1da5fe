"""Convolution layers that are ``torch.nn.ConvNd`` subclasses: padded, depthwise, pointwise.

One rank-generic mixin per family holds all argument handling; the 1d/2d/3d
classes only pick the ``nn.ConvNd`` they extend. Because each layer *is* an
``nn.Conv1d/2d/3d``, tools that understand those (ONNX export, quantization,
FLOP counters, pruning) understand these.

Weight layout of a depthwise layer with ``C`` input channels and depth multiplier ``M``
(2d shown)::

    weight: (C*M, 1, kH, kW)
    output channel  c*M + m  =  filter m of input channel c
    e.g. C=3, M=2:  filters 0,1 read channel 0;  2,3 read channel 1;  4,5 read channel 2
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from sepconv import _validation as check
from sepconv.functional.conv import (
    conv_forward,
    depthwise_by_kernels,
    depthwise_forward,
    pytorch_depthwise,
)
from sepconv.functional.padding import PaddingPlan, PaddingSpec, check_input_fits, resolve_padding
from sepconv.kernels import dispatch
from sepconv.layers import plans
from sepconv.layers.init import conv_fan_in, variance_preserving_


class _PaddedConvMixin:
    """Adds TensorFlow-style padding specs, input checks and stage-wise init to ``nn.ConvNd``.

    ``padding`` may be an int, a tuple, ``"valid"``, ``"same"`` (any stride) or
    ``"causal"`` (1d). When the padding is symmetric it is stored in ``self.padding``
    exactly as ``nn.ConvNd`` would; otherwise ``self.padding`` is 0 and the layer pads
    explicitly (``self.padding_spec`` keeps what the user asked for).
    """

    _rank: int
    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: PaddingSpec = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        rank = self._rank
        check.conv_channels(in_channels, out_channels, groups)
        kernel_t = check.int_tuple(kernel_size, rank, "kernel_size")
        stride_t = check.int_tuple(stride, rank, "stride")
        dilation_t = check.int_tuple(dilation, rank, "dilation")
        check.padding_mode(padding_mode)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {bias!r}")
        plan = resolve_padding(padding, kernel_t, stride_t, dilation_t)
        super().__init__(  # type: ignore[call-arg]
            in_channels,
            out_channels,
            kernel_t,
            stride_t,
            plan.symmetric or 0,
            dilation_t,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self.padding_spec = padding
        self._plan: PaddingPlan = plan

    def reset_parameters(self) -> None:
        """Variance-preserving init with this stage's own fan-in (see :mod:`sepconv.layers.init`)."""
        fan_in = conv_fan_in(self.weight.shape[1], tuple(self.weight.shape[2:]))
        variance_preserving_(self.weight, self.bias, fan_in)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return conv_forward(
            input,
            weight,
            bias,
            self.stride,
            self.dilation,
            self.groups,
            self._plan,
            self.padding_mode,
        )

    def forward(self, input: Tensor) -> Tensor:
        """``(N, C_in, *spatial) -> (N, C_out, *spatial_out)``; unbatched ``(C_in, *spatial)`` too."""
        batched = self._batched(input)
        out = self._conv_forward(batched, self.weight, self.bias)
        return out if batched is input else out.squeeze(0)

    def _batched(self, input: Tensor) -> Tensor:
        """Check ``input`` and return it with a batch dim.

        While ``torch.fx`` traces, ``input`` is a Proxy whose rank cannot be branched on:
        it is taken to be batched, as ``nn.ConvNd`` users trace it.
        """
        if check.is_fx_tracing():
            return input
        check.check_input(input, self._rank, self.in_channels)
        check_input_fits(input.shape[-self._rank :], self._plan)
        return input if input.dim() == self._rank + 2 else input.unsqueeze(0)

    def extra_repr(self) -> str:
        text = super().extra_repr()  # type: ignore[misc]
        if self._plan.symmetric is None:
            text += f", padding={self.padding_spec!r}"
        return text


class PaddedConv1d(_PaddedConvMixin, nn.Conv1d):
    """``nn.Conv1d`` with ``"same"`` (any stride) and ``"causal"`` padding. Input ``(N, C, L)``."""

    _rank = 1


class PaddedConv2d(_PaddedConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``"same"`` padding for any stride. Input ``(N, C, H, W)``."""

    _rank = 2


class PaddedConv3d(_PaddedConvMixin, nn.Conv3d):
    """``nn.Conv3d`` with TensorFlow ``"same"`` padding for any stride. Input ``(N, C, D, H, W)``."""

    _rank = 3


class _DepthwiseMixin:
    """Depthwise conv: ``groups = in_channels``, ``out_channels = in_channels * depth_multiplier``.

    Args:
        in_channels: ``C``, channels of the input.
        kernel_size, stride, padding, dilation, bias, padding_mode: as ``nn.ConvNd``;
            ``padding`` also takes ``"valid"``, ``"same"`` and (1d) ``"causal"``.
        depth_multiplier: ``M``, filters per input channel. Output channel ``c*M + m`` is
            filter ``m`` applied to input channel ``c``; ``weight`` is ``(C*M, 1, *kernel)``.

    Shapes: ``(N, C, *spatial) -> (N, C*M, *spatial_out)``.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: PaddingSpec = 0,
        dilation: int | tuple[int, ...] = 1,
        depth_multiplier: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check.positive_int(in_channels, "in_channels")
        check.positive_int(depth_multiplier, "depth_multiplier")
        super().__init__(  # type: ignore[call-arg]
            in_channels,
            in_channels * depth_multiplier,
            kernel_size,
            stride,
            padding,
            dilation,
            in_channels,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self.depth_multiplier = depth_multiplier

    def forward(self, input: Tensor) -> Tensor:
        """``(N, C, *spatial) -> (N, C*M, *spatial_out)``; unbatched ``(C, *spatial)`` too."""
        # A replayed plan first, before the input checks (plans.replayed), as in the
        # separable layers; not for inputs the kernels never take (3d, float16), whose
        # PyTorch call asks less than a plan's check.
        if type(self) in _PLANNED and dispatch.kernel_input(input):
            out = plans.replayed(self, input)  # type: ignore[arg-type]
            if out is not None:
                return out
        return super().forward(input)  # type: ignore[misc]

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        mode = self.padding_mode  # type: ignore[attr-defined]
        args = (weight, bias, self.stride, self.dilation, self._plan, mode)  # type: ignore[attr-defined]
        if not (self._plannable(weight, bias) and dispatch.kernel_input(input)):
            return depthwise_forward(input, *args)

        # Without autograd the call that ran (the kernels', or PyTorch's where they decline
        # it: a geometry they do not take, or `auto` found PyTorch faster) is recorded and
        # later calls replay it while nothing it depends on changes (sepconv.layers.plans):
        # a batch-1 call's Python 10.5 -> 7.4 us (docs/performance.md, run AE).
        def run(x: Tensor) -> tuple[Tensor, bool]:
            out = depthwise_by_kernels(x, *args)
            if out is None:
                out = pytorch_depthwise(x, *args)
                dispatch.record(functools.partial(_pytorch_step, args))
            return out, True

        return plans.planned(self, input, run, ())  # type: ignore[arg-type, return-value]

    def _plannable(self, weight: Tensor, bias: Tensor | None) -> bool:
        """Whether a call may record a plan: the library's own class, called with its own
        parameters (not a pruned weight, which a hook computes before each call)."""
        own = self._parameters  # type: ignore[attr-defined]
        return type(self) in _PLANNED and weight is own.get("weight") and bias is own.get("bias")


def _pytorch_step(args: tuple, x: Tensor) -> Tensor:
    """PyTorch's depthwise conv of ``x`` with ``args``: a plan's step where the kernels
    declined the call."""
    return pytorch_depthwise(x, *args)


class DepthwiseConv1d(_DepthwiseMixin, PaddedConv1d):
    __doc__ = _DepthwiseMixin.__doc__


class DepthwiseConv2d(_DepthwiseMixin, PaddedConv2d):
    __doc__ = _DepthwiseMixin.__doc__


class DepthwiseConv3d(_DepthwiseMixin, PaddedConv3d):
    __doc__ = _DepthwiseMixin.__doc__


_PLANNED = frozenset({DepthwiseConv1d, DepthwiseConv2d, DepthwiseConv3d})


class _PointwiseMixin:
    """Pointwise (1x1) conv mixing channels at each position.

    Shapes: ``(N, in_channels, *spatial) -> (N, out_channels, *spatial)``;
    ``weight`` is ``(out_channels, in_channels/groups, 1, ..., 1)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        groups: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            in_channels, out_channels, 1, 1, 0, 1, groups, bias, "zeros", device=device, dtype=dtype
        )


class PointwiseConv1d(_PointwiseMixin, PaddedConv1d):
    __doc__ = _PointwiseMixin.__doc__


class PointwiseConv2d(_PointwiseMixin, PaddedConv2d):
    __doc__ = _PointwiseMixin.__doc__


class PointwiseConv3d(_PointwiseMixin, PaddedConv3d):
    __doc__ = _PointwiseMixin.__doc__
