"""MobileNet blocks at inference: a depthwise ``ConvNormAct`` and the 1x1 conv after it as one
fused separable call.

The blocks keep torchvision's layout (plain ``nn.Conv2d`` children, so that its state dicts
load), which :class:`~sepconv.SeparableConv2d`'s fusion does not see. Here the pair
``depthwise conv -> norm -> activation -> 1x1 conv`` goes to
:func:`sepconv.functional.conv.separable_forward` with the norm and activation as its
:class:`~sepconv.functional.conv.MidStage`, where that is exact and unobserved
(:mod:`sepconv.layers.fusion`); otherwise the modules run one by one.

A 1x1 ``ConvNormAct`` on its own (MobileNetV2's expansion, the last conv of the features)
runs as one GEMM into a pooled output with the norm folded into its weights and bias, then
the activation in place (:func:`pointwise_conv_norm_act`): module by module it wrote three
fresh tensors, which page-fault on first touch (docs/performance.md, run V). A stem's
``ConvNormAct`` (a dense conv of at most four input channels) runs as one kernel call the
same way (:func:`stem_conv_norm_act`). Without autograd, a sequence's later calls replay its
first call's kernel calls while nothing they depend on has changed (:mod:`sepconv.layers.plans`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from sepconv.blocks.common import ConvNormAct
from sepconv.functional.conv import MidStage, separable_forward
from sepconv.functional.padding import PaddingPlan, resolve_padding
from sepconv.kernels import _build, _ops, dispatch
from sepconv.layers import plans
from sepconv.layers.fusion import (
    UNFUSED,
    eager_mode,
    eager_on,
    has_plain_weights,
    inference_mid_stage,
    plain_module,
    records_history,
    unobserved,
)


def fused_depthwise_pointwise(
    dw: nn.Module, pw: nn.Module, x: Tensor, post: MidStage | None = None
) -> Tensor | None:
    """``pw(dw(x))`` as one fused call, or None where the modules must run one by one.

    Args:
        dw: a :class:`ConvNormAct` whose conv is a depthwise ``nn.Conv2d`` (one group per
            input channel, any depth multiplier, integer padding).
        pw: a 1x1 ``nn.Conv2d`` (stride 1, no padding; any groups).
        x: ``(N, C, H, W)``.
        post: what the call applies after ``pw`` (the norm and clamp of the modules that
            follow it, from :func:`~sepconv.layers.fusion.inference_mid_stage`), or None.

    Returns:
        ``(N, O, H', W')``, or None: autograd history to record, tracing, hooks, other
        module classes, or a norm/activation that
        :func:`~sepconv.layers.fusion.mid_stage_of` does not take.
    """
    return _fused_pair(dw, pw, x, post) if _eager_inference_on(x) else None


def _fused_pair(
    dw: nn.Module, pw: nn.Module, x: Tensor, post: MidStage | None = None
) -> Tensor | None:
    """:func:`fused_depthwise_pointwise` once :func:`_eager_inference_on` holds."""
    if not plain_module(dw, ConvNormAct):
        return None
    stages = conv_norm_act_stages(dw)
    if stages is None:
        return None
    conv, norm, act = stages
    if not (_plain_conv(conv) and _plain_conv(pw) and _is_depthwise(conv) and _is_pointwise(pw)):
        return None
    if x.shape[1] != conv.in_channels or pw.in_channels != conv.out_channels:
        return None  # (mis-wired: the modules raise their error)
    mid = inference_mid_stage(norm, act, 2, conv, pw)
    if mid is UNFUSED:
        return None
    stride, dilation = conv.stride, conv.dilation
    plan = _plan(conv.padding, conv.kernel_size, stride, dilation)
    params, pw_params = conv._parameters, pw._parameters
    return separable_forward(
        x,
        params["weight"],
        pw_params["weight"],
        params["bias"],
        pw_params["bias"],
        stride,
        dilation,
        plan,
        conv.padding_mode,
        mid,
        post,
    )


def pointwise_conv_norm_act(cna: nn.Module, x: Tensor) -> Tensor | None:
    """``cna(x)`` for a 1x1 :class:`ConvNormAct` at inference, or None where its modules
    must run one by one.

    One GEMM with the norm folded into the weights and the bias (the kernels' own for
    float32 where it runs, else ``torch.baddbmm``, or ``torch.addmm`` for channels_last
    input) into a pooled output (:func:`sepconv.kernels._ops.conv_output`), the clamp in
    place.

    Args:
        cna: a ``ConvNormAct`` whose conv is a plain 1x1 ``nn.Conv2d`` (stride 1, no padding,
            one group), its norm and activation as
            :func:`~sepconv.layers.fusion.mid_stage_of` takes them.
        x: ``(N, C, H, W)``, float32 or float64, contiguous or channels_last.

    Returns:
        ``(N, O, H, W)`` in ``x``'s layout, or None (also under ``SEPCONV_KERNELS=off``).
    """
    if not _eager_inference_on(x) or not _is_pointwise(_first_child(cna)):
        return None
    return _conv_norm_act(cna, x)


def stem_conv_norm_act(cna: nn.Module, x: Tensor) -> Tensor | None:
    """``cna(x)`` for a network's stem at inference in one kernel call
    (:func:`sepconv.kernels._ops.dense_forward_raw`), or None where its modules must run.

    Through PyTorch, a 3-channel NCHW convolution ran at a tenth of its channels_last speed
    and the norm and activation each wrote a fresh tensor: MobileNetV2's stem took 2.2 ms at
    batch 1, the kernel 0.11 ms (docs/performance.md, run X).

    Args:
        cna: a ``ConvNormAct`` whose conv is a plain ``nn.Conv2d`` of at most
            :data:`STEM_CHANNELS` input channels, one group, zero padding given as integers
            and at most :data:`STEM_TAPS` weights a filter; its norm and activation as
            :func:`~sepconv.layers.fusion.mid_stage_of` takes them.
        x: ``(N, C, H, W)``, float32, contiguous or channels_last.

    Returns:
        ``(N, O, OH, OW)`` in ``x``'s layout, or None (also under ``SEPCONV_KERNELS=off``).
    """
    if not _eager_inference_on(x) or not _is_stem(_first_child(cna), x):
        return None
    return _conv_norm_act(cna, x)


def conv_norm_act(cna: nn.Module, x: Tensor) -> Tensor | None:
    """:func:`pointwise_conv_norm_act` or :func:`stem_conv_norm_act`, whichever takes
    ``cna``, or None. ``ConvNormAct.forward`` asks it: hooks on ``cna`` itself have run or
    will run around that call, so only its children's are asked for."""
    return _conv_norm_act(cna, x, from_forward=True) if _eager_inference_on(x) else None


#: Input channels and weights a filter up to which a dense conv runs as a stem
#: (:func:`stem_conv_norm_act`): RGB(A) or grey images, kernels up to 7x7 on four channels
#: (:data:`STEM_TAPS_NARROW` where the library's vectors are narrower than 512 bits).
STEM_CHANNELS, STEM_TAPS = 4, 256
#: With AVX2 the kernel's 7x7 3 -> 64 stem took 1.7x the time of PyTorch's (oneDNN with
#: AVX-512, on the same Zen 5), its 3x3 3 -> 32 stem 0.15x: 3x3 filters on 3 channels only.
STEM_TAPS_NARROW = 27


def _conv_norm_act(cna: nn.Module, x: Tensor, from_forward: bool = False) -> Tensor | None:
    """A 1x1 or a stem's ``ConvNormAct`` in one call, once :func:`_eager_inference_on`
    holds (:func:`pointwise_conv_norm_act`, :func:`stem_conv_norm_act`), else None."""
    if x.dtype not in (torch.float32, torch.float64):
        return None
    if not (isinstance(cna, ConvNormAct) if from_forward else plain_module(cna, ConvNormAct)):
        return None
    stages = conv_norm_act_stages(cna)
    if stages is None:
        return None
    conv, norm, act = stages
    if not (_plain_conv(conv) and conv.groups == 1) or x.shape[1] != conv.in_channels:
        return None
    pointwise = _is_pointwise(conv)
    if not (pointwise or _is_stem(conv, x)):
        return None
    mid = inference_mid_stage(norm, act, 2, conv)
    if mid is UNFUSED or not _plain_tensors(x, conv, mid):
        return None
    if pointwise:
        step = _folded_gemm(x.dtype, conv, mid)
    else:
        norm_tensors, params = mid.kernel_args()
        step = functools.partial(
            _ops.dense_forward_raw,
            weight=conv.weight,
            bias=conv.bias,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            mid=params,
            norm=norm_tensors,
        )
    return dispatch.run_recorded(step, x)  # (what a plan replays: sepconv.layers.plans)


def _first_child(cna: nn.Module) -> nn.Module | None:
    return next(iter(cna._modules.values()), None)


def _is_stem(conv: nn.Module | None, x: Tensor) -> bool:
    """A dense conv :func:`stem_conv_norm_act` takes for ``x`` (float32, an output of at
    least one pixel: else the module raises its error), the kernels usable; not a 1x1 conv
    (:func:`pointwise_conv_norm_act`'s)."""
    if not isinstance(conv, nn.Conv2d) or isinstance(conv.padding, str) or _is_pointwise(conv):
        return False
    kh, kw = conv.kernel_size
    taps = conv.in_channels * kh * kw
    taps_ok = conv.in_channels <= STEM_CHANNELS and taps <= STEM_TAPS
    if not (taps_ok and conv.groups == 1 and conv.padding_mode == "zeros"):
        return False
    if x.dtype != torch.float32 or x.dim() != 4:
        return False
    sizes = zip(x.shape[2:], conv.kernel_size, conv.padding, conv.dilation)
    if any(n + 2 * p - d * (k - 1) - 1 < 0 for n, k, p, d in sizes):
        return False
    return dispatch.kernels_usable() and (taps <= STEM_TAPS_NARROW or _wide_vectors())


@functools.cache
def _wide_vectors() -> bool:
    """The kernels were built for 512-bit vectors (AVX-512)."""
    return _build.vector_bits() == 512


def norm_act_inplace(out: Tensor, norm: nn.Module, act: nn.Module) -> Tensor | None:
    """``act(norm(out))`` computed in ``out`` (which the caller owns: a fresh output), or None
    where the modules must run: one pass for the norm (``torch.addcmul``), one for the clamp.
    Module by module each wrote a fresh tensor."""
    if not _eager_inference_on(out):
        return None
    mid = inference_mid_stage(norm, act, 2)
    if mid is UNFUSED:
        return None
    if mid.running_mean is not None:
        alpha, shift = _norm_affine(mid)
        shape = (1, -1, 1, 1)
        torch.addcmul(shift.view(shape), out, alpha.view(shape), out=out)
    if mid.lo is not None or mid.hi is not None:
        out.clamp_(mid.lo, mid.hi)
    return out


def run_sequential(layers: nn.Sequential, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """``layers(x)``, or ``residual + layers(x)``, with each depthwise ``ConvNormAct``
    directly followed by a 1x1 conv run as one fused call where
    :func:`fused_depthwise_pointwise` takes the pair, other 1x1 ``ConvNormAct`` layers as
    :func:`pointwise_conv_norm_act` runs them and a stem's as :func:`stem_conv_norm_act`
    does. ``residual`` is added in place where the last step was such a call (its output is
    fresh and no one else's): out of place, the sum was a fresh tensor that page-faults."""
    # What holds for the whole sequence is asked once (asked per layer, it was a tenth of
    # MobileNetV2's time at batch 1); whether x records history, per layer. Without autograd,
    # a call that finds the sequence as its first call left it replays that call's steps
    # (sepconv.layers.plans).
    mode = eager_mode()
    if mode is None or not unobserved(layers):
        return add_residual(residual, layers(x), fresh=False)
    plan = plans.lookup(layers, x, mode)
    if plan is not None:
        return add_residual(residual, plan.run(x), plan.fresh)
    recorder = plans.Recorder(layers, x, mode, sequence=True)
    modules = list(layers._modules.values())
    i, fresh = 0, False
    while i < len(modules):
        inference = _inference_input(x)
        if inference and i + 1 < len(modules):
            # (a batch norm after the pair, as MobileNetV2's projection norm, goes into the
            # call: as a module it was a pass over the output and a fresh tensor)
            post = _norm_after(modules[i + 2]) if i + 2 < len(modules) else None
            with dispatch.capture() as recorded:
                out = _fused_pair(modules[i], modules[i + 1], x, post)
            if out is not None:
                taken = modules[i : i + (2 if post is None else 3)]
                recorder.fused(recorded, [*taken, *_children(modules[i])], x, i)
                x, i, fresh = out, i + len(taken), True
                continue
        with dispatch.capture() as recorded:
            out = _conv_norm_act(modules[i], x) if inference else _linear_row(modules[i], x)
        fresh = out is not None
        if fresh:
            recorder.fused(recorded, [modules[i], *_children(modules[i])], x, i)
        else:
            with dispatch.uncaptured():
                out = modules[i](x)
            recorder.module(modules[i], x, i)
        x, i = out, i + 1
    recorder.finish(fresh)
    return add_residual(residual, x, fresh)


def _linear_row(linear: nn.Module, x: Tensor) -> Tensor | None:
    """``linear(x)`` for a plain ``nn.Linear`` on one row of float32 features (a classifier
    at batch 1) as the kernels' 1x1 forward with one pixel, a GEMV over the threads; else
    None. Inside MobileNetV2 at batch 1, ``nn.Linear`` (1280 -> 1000) took 182 us, its
    weight read from memory at 28 GB/s, the kernel 92 us (docs/performance.md, run AA); with
    AVX2 (AMD Zen 2, run AK) the network took 0.979x the time on two threads, 0.996x on one.
    Not for more rows (the kernel would read the weight once per row), nor for builds
    without AVX2."""
    if not (x.dim() == 2 and x.shape[0] == 1 and x.dtype == torch.float32):
        return None
    if not (plain_module(linear, nn.Linear) and has_plain_weights(linear)):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or records_history(linear)):
        return None  # (a trainable head on frozen features too)
    weight, bias = linear.weight, linear.bias
    if weight.dim() != 2 or x.shape[1] != weight.shape[1] or not x.is_contiguous():
        return None  # (mis-wired: the module raises its error)
    if 0 in weight.shape:
        return None  # (no inputs or outputs: the kernel divides by the channel count)
    if bias is not None and bias.shape != weight.shape[:1]:
        return None  # (a bias that broadcasts, as F.linear allows)
    if not (dispatch.plain_tensors((x, weight, bias), x.dtype) and _pointwise_kernel_on()):
        return None
    if (_build.vector_bits() or 0) < 256:
        return None  # (the one column is gemm_f32's tail_columns: AVX2 or AVX-512 only)
    return dispatch.run_recorded(functools.partial(_gemv, weight=weight, bias=bias), x)


def _gemv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``(1, C) -> (1, O)``: ``x @ weight.T + bias`` through the 1x1 forward."""
    o, c = weight.shape
    _, no_stage = dispatch.NO_STAGE
    out = _ops.pointwise_forward_raw(x.view(1, c, 1, 1), weight.reshape(o, c, 1, 1), bias, no_stage)
    return out.view(1, o)


def _children(module: nn.Module) -> list[nn.Module]:
    return list(module._modules.values())


def add_residual(residual: Tensor | None, out: Tensor, fresh: bool) -> Tensor:
    """``residual + out`` (``out`` where ``residual`` is None), in ``out`` where it is
    ``fresh`` (a fused call's output) and the sum has its shape and dtype."""
    if residual is None:
        return out
    if fresh and residual.shape == out.shape and residual.dtype == out.dtype:
        return out.add_(residual)
    return residual + out


_IDENTITY = nn.Identity()


def _norm_after(module: nn.Module) -> MidStage | None:
    """An inference ``nn.BatchNorm2d`` as the stage after a fused call, or None."""
    if type(module) is not nn.BatchNorm2d:
        return None
    post = inference_mid_stage(module, _IDENTITY, 2)
    return None if post is UNFUSED else post


def _eager_inference_on(x: Tensor) -> bool:
    """Plain eager inference on a 4-d ``x``: :func:`eager_on` and :func:`_inference_input`.
    Tracing is asked first: under torch.fx, ``x`` is a Proxy that cannot be inspected."""
    return eager_on() and _inference_input(x)


def _inference_input(x: Tensor) -> bool:
    """``x`` is 4-d and records no autograd history (as
    :func:`sepconv.kernels.dispatch.eager_inference` asks)."""
    return x.dim() == 4 and not (torch.is_grad_enabled() and x.requires_grad)


def conv_norm_act_stages(cna: ConvNormAct) -> tuple[nn.Module, nn.Module, nn.Module] | None:
    """``(conv, norm, act)`` of a ConvNormAct (``nn.Identity`` for an absent one), or None
    when its children are not what it was built with."""
    children = list(cna._modules.values())
    has_norm, has_act = cna._has_norm, cna._has_act  # (ConvNormAct leaves out absent ones)
    if len(children) != 1 + has_norm + has_act:
        return None  # (appended to or cut since)
    norm = children[1] if has_norm else _IDENTITY
    return children[0], norm, children[-1] if has_act else _IDENTITY


def _plain_tensors(x: Tensor, conv: nn.Conv2d, mid: MidStage) -> bool:
    """Every tensor is a plain CPU tensor of ``x``'s dtype (as the kernels' own check), and
    ``x`` contiguous or channels_last."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    tensors = (conv.weight, conv.bias, mid.running_mean, mid.running_var, mid.weight, mid.bias)
    return dispatch.plain_tensors((x, *tensors), x.dtype)


def _norm_affine(mid: MidStage) -> tuple[Tensor, Tensor]:
    """``(alpha, shift)`` of ``mid``'s norm: ``norm(y) = y * alpha + shift`` per channel."""
    alpha = torch.rsqrt(mid.running_var + mid.eps)
    if mid.weight is not None:
        alpha = alpha * mid.weight
    shift = -mid.running_mean * alpha
    return alpha, shift if mid.bias is None else shift + mid.bias


def _folded_gemm(dtype: torch.dtype, conv: nn.Conv2d, mid: MidStage) -> plans.Step:
    """The 1x1 conv with ``mid``'s norm folded in, then its clamp, as a function of the input:
    one kernel call where the own GEMM runs the kernels' GEMMs (float32), else through
    PyTorch (:func:`_folded_gemm_pytorch`)."""
    if dtype == torch.float32 and _pointwise_kernel_on():
        norm, params = mid.kernel_args()
        return functools.partial(
            _ops.pointwise_forward_raw, weight=conv.weight, bias=conv.bias, mid=params, norm=norm
        )
    return functools.partial(_folded_gemm_pytorch, conv=conv, mid=mid)


def _folded_gemm_pytorch(x: Tensor, conv: nn.Conv2d, mid: MidStage) -> Tensor:
    """:func:`_folded_gemm` through PyTorch: a batched GEMM, the clamp in place."""
    n, c, h, w = x.shape
    o = conv.out_channels
    weight, bias = conv.weight.view(o, c), conv.bias
    if mid.running_mean is not None:
        alpha, shift = _norm_affine(mid)
        bias = shift if bias is None else torch.addcmul(shift, bias, alpha)
        weight = weight * alpha[:, None]
    if bias is None:
        bias = x.new_zeros(o)
    out = _ops.conv_output(x, o, h, w)
    if x.is_contiguous():
        columns = out.view(n, o, h * w)
        torch.baddbmm(
            bias.view(1, o, 1).expand(n, o, h * w),
            weight.expand(n, o, c),
            x.view(n, c, h * w),
            out=columns,
        )
    else:  # channels_last: pixels are rows
        rows = out.permute(0, 2, 3, 1).view(n * h * w, o)
        torch.addmm(bias, x.permute(0, 2, 3, 1).reshape(n * h * w, c), weight.t(), out=rows)
    if mid.lo is not None or mid.hi is not None:
        out.clamp_(mid.lo, mid.hi)
    return out


def _pointwise_kernel_on() -> bool:
    """The kernels' 1x1 forward (``csrc/pointwise.h``) runs on the own GEMM: where that runs
    the kernels' GEMMs (``own``: AMD and other non-Intel CPUs). On Intel CPUs MKL's AVX-512
    code is as fast, and this has not been measured there."""
    return _build.tile_gemm_choice() == "own" and dispatch.kernels_usable()


def _plain_conv(conv: nn.Module) -> bool:
    """An ``nn.Conv2d`` of exactly that class, its own ``forward``, unhooked, plain
    parameters (not pruned or parametrized), integer padding."""
    return (
        plain_module(conv, nn.Conv2d)
        and has_plain_weights(conv)
        and not isinstance(conv.padding, str)
    )


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels and conv.out_channels % conv.in_channels == 0


def _is_pointwise(conv: nn.Module | None) -> bool:
    one = (1, 1)
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == one
        and conv.stride == one
        and conv.padding == (0, 0)
    )


@functools.lru_cache(maxsize=256)
def _plan(padding, kernel, stride, dilation) -> PaddingPlan:
    return resolve_padding(tuple(padding), tuple(kernel), tuple(stride), tuple(dilation))
