"""One implementation of depthwise, pointwise and separable convolution for 1d/2d/3d.

The public functions (``depthwise_conv2d`` ...) validate their arguments, resolve
the padding spec and call the ``*_forward`` functions below; the layers resolve
their padding once in ``__init__`` and call the same ``*_forward`` functions, so
there is a single code path. ``separable_forward`` offers each call to the fast
CPU kernels first (:mod:`sepconv.kernels.dispatch`) and runs PyTorch otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor

from sepconv import _validation as check
from sepconv.functional.padding import (
    PaddingPlan,
    PaddingSpec,
    check_input_fits,
    pad_input,
    resolve_padding,
)
from sepconv.kernels import dispatch

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# Padding may read the input size (TensorFlow "same" with stride > 1), which an fx Proxy
# cannot give: record the call as one graph node instead of tracing into it.
torch.fx.wrap("pad_input")


def conv_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    plan: PaddingPlan,
    padding_mode: str,
) -> Tensor:
    """``F.convNd`` with a resolved padding plan; ``x`` is ``(N, C, *spatial)``."""
    conv = _CONV[len(stride)]  # not weight.dim(): under torch.fx the weight is a Proxy
    if plan.symmetric is not None and padding_mode == "zeros":
        return conv(x, weight, bias, stride, plan.symmetric, dilation, groups)
    return conv(pad_input(x, plan, padding_mode), weight, bias, stride, 0, dilation, groups)


def depthwise_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    plan: PaddingPlan,
    padding_mode: str,
) -> Tensor:
    """Depthwise conv of ``x`` ``(N, C, *spatial)`` with ``weight`` ``(C*M, 1, *kernel)``."""
    args = (x, weight, bias, stride, dilation, plan, padding_mode)
    out = depthwise_by_kernels(*args)
    return out if out is not None else pytorch_depthwise(*args)


def depthwise_by_kernels(x, weight, bias, stride, dilation, plan, padding_mode) -> Tensor | None:
    """:func:`depthwise_forward` by the fast kernels (under ``auto`` also PyTorch's on a
    channels_last copy, where it measured that faster), or None where they decline it (and
    where ``auto`` measured PyTorch's call on ``x`` as it is faster)."""
    args = (x, weight, bias, stride, dilation, plan, padding_mode)
    return dispatch.depthwise(*args, reference=pytorch_depthwise)


def pytorch_depthwise(x, weight, bias, stride, dilation, plan, padding_mode) -> Tensor:
    """PyTorch's depthwise conv (what runs when the fast kernels decline)."""
    return conv_forward(x, weight, bias, stride, dilation, x.shape[1], plan, padding_mode)


@dataclass
class MidStage:
    """What runs between the depthwise and pointwise stages of an inference call, as
    MobileNet's depthwise -> BatchNorm -> ReLU6 -> pointwise: a batch norm with running
    statistics (optional), then a clamp (optional; ReLU is ``lo=0``, ReLU6 ``lo=0, hi=6``).

    The fast kernels fold the norm into the depthwise weights and clamp the intermediate
    while it is in cache; calls that record autograd history run PyTorch's ops instead.

    Attributes:
        running_mean, running_var: ``(C*M,)``, or None for no norm.
        weight, bias: the norm's affine ``(C*M,)``, or None (1 and 0).
        eps: the norm's eps.
        lo, hi: the clamp's bounds; None leaves that side open (both None: no clamp).
    """

    running_mean: Tensor | None = None
    running_var: Tensor | None = None
    weight: Tensor | None = None
    bias: Tensor | None = None
    eps: float = 1e-5
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self) -> None:
        if self.running_mean is None and not (
            self.running_var is None and self.weight is None and self.bias is None
        ):
            raise ValueError(
                "MidStage: running_var, weight and bias need running_mean (the norm); got "
                f"running_mean=None with running_var={self.running_var is not None}, "
                f"weight={self.weight is not None}, bias={self.bias is not None}"
            )
        if (self.running_mean is None) != (self.running_var is None):
            raise ValueError("MidStage: running_mean and running_var come together")
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise ValueError(f"MidStage: lo must not exceed hi, got lo={self.lo}, hi={self.hi}")

    def kernel_args(self) -> tuple[tuple, tuple]:
        """``(norm tensors, parameters)`` as :func:`sepconv.kernels.dispatch.separable` takes them."""
        norm = (self.running_mean, self.running_var, self.weight, self.bias)
        return norm, (self.running_mean is not None, float(self.eps), self.lo, self.hi)


def separable_forward(
    x: Tensor,
    depthwise_weight: Tensor,
    pointwise_weight: Tensor,
    depthwise_bias: Tensor | None,
    pointwise_bias: Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    plan: PaddingPlan,
    padding_mode: str,
    mid: MidStage | None = None,
    post: MidStage | None = None,
) -> Tensor:
    """Depthwise then pointwise conv; ``x`` is ``(N, C, *spatial)``.

    ``depthwise_weight`` is ``(C*M, 1, *kernel)``; ``pointwise_weight`` is
    ``(O, C*M/G, 1, ..., 1)`` for a pointwise stage with ``G`` groups. ``mid``: what runs
    between the stages (:class:`MidStage`), if anything; ``post``: what runs after the
    pointwise stage (a :class:`MidStage` over its ``O`` outputs: a norm, then a clamp).
    """
    args = (
        x,
        depthwise_weight,
        pointwise_weight,
        depthwise_bias,
        pointwise_bias,
        stride,
        dilation,
        plan,
        padding_mode,
    )
    if mid is not None or post is not None:
        norm, params = mid.kernel_args() if mid is not None else dispatch.NO_STAGE
        post_norm, post_params = post.kernel_args() if post is not None else dispatch.NO_STAGE
        out = dispatch.separable(
            *args,
            reference=_pytorch_separable_stages,
            mid=(norm, params),
            post=(post_norm, post_params),
        )
        if out is not None:
            return out
        rest = (*args[1:5], *norm, *post_norm, *args[5:], params, post_params)
        return _recorded_fallback(_pytorch_separable_stages, x, rest)
    out = dispatch.separable(*args, reference=_pytorch_separable)
    return out if out is not None else _recorded_fallback(_pytorch_separable, x, args[1:])


def _recorded_fallback(fn: Callable[..., Tensor], x: Tensor, rest: tuple) -> Tensor:
    """``fn(x, *rest)``, the PyTorch path of a call the kernels declined, recorded as the
    call's step (:func:`sepconv.kernels.dispatch.record`) as the kernel path would be."""
    return dispatch.run_recorded(partial(_input_first, fn, rest), x)


def _input_first(fn: Callable[..., Tensor], rest: tuple, x: Tensor) -> Tensor:
    return fn(x, *rest)


def _pytorch_separable(x, wd, wp, bd, bp, stride, dilation, plan, padding_mode) -> Tensor:
    """PyTorch's two convolutions (what runs when the fast kernels decline); arguments as
    :func:`separable_forward`'s, weights and biases abbreviated."""
    mid = pytorch_depthwise(x, wd, bd, stride, dilation, plan, padding_mode)
    return _pointwise(mid, wp, bp, wd, len(stride))


def _pytorch_separable_stages(
    x, wd, wp, bd, bp, mean, var, nw, nb, pmean, pvar, pnw, pnb, stride, dilation, plan,
    padding_mode, params, post_params,
) -> Tensor:  # fmt: skip
    """:func:`_pytorch_separable` with :class:`MidStage` s between the convolutions and after
    them: their norms' tensors after the biases, ``params`` / ``post_params`` as
    :meth:`MidStage.kernel_args` gives them."""
    mid = pytorch_depthwise(x, wd, bd, stride, dilation, plan, padding_mode)
    mid = _pytorch_stage(mid, mean, var, nw, nb, params)
    out = _pointwise(mid, wp, bp, wd, len(stride))
    return _pytorch_stage(out, pmean, pvar, pnw, pnb, post_params)


def _pytorch_stage(x, mean, var, weight, bias, params) -> Tensor:
    """A :class:`MidStage`'s norm (inference batch norm) then clamp, as the modules compute them."""
    norm, eps, lo, hi = params
    if norm:
        x = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
    return _clamp(x, lo, hi)


def _clamp(x: Tensor, lo: float | None, hi: float | None) -> Tensor:
    """The clamp as the activation modules compute it: ReLU for ``[0, inf)``, Hardtanh for
    two bounds (their gradients are zero at the bounds; ``torch.clamp``'s is not)."""
    if lo is None and hi is None:
        return x
    if lo == 0.0 and hi is None:
        return F.relu(x)
    if lo is not None and hi is not None:
        return F.hardtanh(x, lo, hi)
    return torch.clamp(x, lo, hi)


def _pointwise(mid: Tensor, wp: Tensor, bp: Tensor | None, wd: Tensor, rank: int) -> Tensor:
    # (rank from the stride, not wp.dim(): under torch.fx the weight is a Proxy)
    return _CONV[rank](mid, wp, bp, 1, 0, 1, wd.shape[0] // wp.shape[1])


# ----------------------------------------------------------------------------- public API


def depthwise_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: PaddingSpec = 0,
    dilation: int | tuple[int, ...] = 1,
    padding_mode: str = "zeros",
    *,
    rank: int,
) -> Tensor:
    """Rank-generic depthwise convolution (``depthwise_conv1d/2d/3d`` bind ``rank``).

    Args:
        x: ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``.
        weight: ``(C*M, 1, *kernel)``; output channel ``c*M + m`` is filter ``m`` of input
            channel ``c`` (``M``, the depth multiplier, is inferred).
        bias: ``(C*M,)`` or None.
        stride, dilation: int or one per spatial dim.
        padding: int, tuple, ``"valid"``, ``"same"`` (TensorFlow rules, any stride) or
            ``"causal"`` (1d).
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.

    Returns:
        ``(N, C*M, *spatial_out)`` (unbatched if ``x`` was).
    """
    batched = _check_rank(x, rank)
    channels = batched.shape[1]
    kernel = _check_depthwise_weight(weight, channels, rank, "weight")
    _check_bias(bias, weight.shape[0], "bias")
    stride_t, dilation_t, plan, mode = _resolve(kernel, stride, padding, dilation, padding_mode)
    check_input_fits(tuple(batched.shape[2:]), plan)
    out = depthwise_forward(batched, weight, bias, stride_t, dilation_t, plan, mode)
    return out if x.dim() == rank + 2 else out.squeeze(0)


def separable_conv(
    x: Tensor,
    depthwise_weight: Tensor,
    pointwise_weight: Tensor,
    depthwise_bias: Tensor | None = None,
    pointwise_bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: PaddingSpec = 0,
    dilation: int | tuple[int, ...] = 1,
    padding_mode: str = "zeros",
    *,
    rank: int,
) -> Tensor:
    """Rank-generic depthwise-separable convolution (``separable_conv1d/2d/3d`` bind ``rank``).

    For weights computed or rescaled on every call (e.g. a StyleGAN generator).

    Args:
        x: ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``.
        depthwise_weight: ``(C*M, 1, *kernel)``; ``M`` is inferred.
        pointwise_weight: ``(O, C*M/G, 1, ..., 1)`` or flat ``(O, C*M/G)``; ``G`` is inferred.
        depthwise_bias: ``(C*M,)`` or None. pointwise_bias: ``(O,)`` or None.
        stride, padding, dilation, padding_mode: of the depthwise stage, as in
            :func:`depthwise_conv`.

    Returns:
        ``(N, O, *spatial_out)`` (unbatched if ``x`` was).
    """
    batched = _check_rank(x, rank)
    channels = batched.shape[1]
    kernel = _check_depthwise_weight(depthwise_weight, channels, rank, "depthwise_weight")
    _check_bias(depthwise_bias, depthwise_weight.shape[0], "depthwise_bias")
    pointwise_weight = _check_pointwise_weight(pointwise_weight, depthwise_weight.shape[0], rank)
    _check_bias(pointwise_bias, pointwise_weight.shape[0], "pointwise_bias")
    stride_t, dilation_t, plan, mode = _resolve(kernel, stride, padding, dilation, padding_mode)
    check_input_fits(tuple(batched.shape[2:]), plan)
    out = separable_forward(
        batched,
        depthwise_weight,
        pointwise_weight,
        depthwise_bias,
        pointwise_bias,
        stride_t,
        dilation_t,
        plan,
        mode,
    )
    return out if x.dim() == rank + 2 else out.squeeze(0)


def _resolve(kernel, stride, padding, dilation, padding_mode):
    rank = len(kernel)
    stride_t = check.int_tuple(stride, rank, "stride")
    dilation_t = check.int_tuple(dilation, rank, "dilation")
    mode = check.padding_mode(padding_mode)
    return stride_t, dilation_t, resolve_padding(padding, kernel, stride_t, dilation_t), mode


def _check_rank(x: object, rank: int) -> Tensor:
    """Return ``x`` batched, ``(N, C, *spatial)``, after checking its rank."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (rank + 1, rank + 2):
        raise ValueError(
            f"input of a {rank}d convolution must be {rank + 2}-d (N, C, *spatial) or "
            f"{rank + 1}-d (C, *spatial), got shape {tuple(x.shape)}"
        )
    return x if x.dim() == rank + 2 else x.unsqueeze(0)


def _check_depthwise_weight(weight: object, channels: int, rank: int, name: str) -> tuple[int, ...]:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    shape = tuple(weight.shape)
    if weight.dim() != rank + 2 or shape[1] != 1 or shape[0] % channels != 0 or shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (C*M, 1, *kernel) = ({channels}*M, 1, {rank} kernel sizes) for "
            f"an input with C={channels} channels, got {shape}"
        )
    return shape[2:]


def _check_pointwise_weight(weight: object, mid_channels: int, rank: int) -> Tensor:
    """Accept ``(O, C*M/G, 1, ..., 1)`` or the flat ``(O, C*M/G)``; return the conv-shaped weight."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"pointwise_weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() == 2:
        weight = weight.reshape(*weight.shape, *([1] * rank))
    shape = tuple(weight.shape)
    ok = weight.dim() == rank + 2 and all(s == 1 for s in shape[2:]) and shape[1] > 0
    if not ok or mid_channels % shape[1] != 0 or shape[0] % (mid_channels // shape[1]) != 0:
        raise ValueError(
            f"pointwise_weight must have shape (O, {mid_channels}/G{', 1' * rank}) with G dividing both "
            f"{mid_channels} and O, got {shape}"
        )
    return weight


def _check_bias(bias: object, channels: int, name: str) -> None:
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(bias).__name__}")
    if tuple(bias.shape) != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), got {tuple(bias.shape)}")
