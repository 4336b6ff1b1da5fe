"""MobileNet blocks at inference: a depthwise ``ConvNormAct`` and the 1x1 conv after it as one
fused separable call.

The blocks keep torchvision's layout (plain ``nn.Conv2d`` children, so that its state dicts
load), which :class:`~sepconv.SeparableConv2d`'s fusion does not see. Here the pair
``depthwise conv -> norm -> activation -> 1x1 conv`` goes to
:func:`sepconv.functional.conv.separable_forward` with the norm and activation as its
:class:`~sepconv.functional.conv.MidStage`, where that is exact and unobserved
(:mod:`sepconv.layers.fusion`); otherwise the modules run one by one.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from sepconv.blocks.common import ConvNormAct
from sepconv.functional.conv import separable_forward
from sepconv.functional.padding import PaddingPlan, resolve_padding
from sepconv.kernels import dispatch
from sepconv.layers.fusion import UNFUSED, any_global_hooks, hooked, mid_stage_of, records_history


def fused_depthwise_pointwise(dw: nn.Module, pw: nn.Module, x: Tensor) -> Tensor | None:
    """``pw(dw(x))`` as one fused call, or None where the modules must run one by one.

    Args:
        dw: a :class:`ConvNormAct` whose conv is a depthwise ``nn.Conv2d`` (one group per
            input channel, any depth multiplier, integer padding).
        pw: a 1x1 ``nn.Conv2d`` (stride 1, no padding; any groups).
        x: ``(N, C, H, W)``.

    Returns:
        ``(N, O, H', W')``, or None: autograd history to record, tracing, hooks, other
        module classes, or a norm/activation :func:`mid_stage_of` does not take.
    """
    if x.dim() != 4 or any_global_hooks() or type(dw) is not ConvNormAct or hooked(dw):
        return None
    children = list(dw._modules.values())
    has_norm, has_act = dw._has_norm, dw._has_act  # (ConvNormAct leaves out absent ones)
    if len(children) != 1 + has_norm + has_act:
        return None  # (appended to or cut since)
    conv = children[0]
    if not (_plain_conv(conv) and _plain_conv(pw) and _is_depthwise(conv) and _is_pointwise(pw)):
        return None
    norm = children[1] if has_norm else _IDENTITY
    act = children[-1] if has_act else _IDENTITY
    if (torch.is_grad_enabled() and records_history(conv, pw, norm)) or dispatch.tracing():
        return None
    mid = mid_stage_of(norm, act, 2)
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
    )


def run_sequential(layers: nn.Sequential, x: Tensor) -> Tensor:
    """``layers(x)``, with each depthwise ``ConvNormAct`` directly followed by a 1x1 conv run
    as one fused call where :func:`fused_depthwise_pointwise` takes the pair."""
    if hooked(layers) or any_global_hooks() or "forward" in layers.__dict__:
        return layers(x)
    modules = list(layers._modules.values())
    i = 0
    while i < len(modules):
        if i + 1 < len(modules):
            out = fused_depthwise_pointwise(modules[i], modules[i + 1], x)
            if out is not None:
                x, i = out, i + 2
                continue
        x, i = modules[i](x), i + 1
    return x


_IDENTITY = nn.Identity()


def _plain_conv(conv: nn.Module) -> bool:
    """An ``nn.Conv2d`` of exactly that class, its own ``forward``, unhooked, plain
    parameters (not pruned or parametrized), integer padding."""
    if type(conv) is not nn.Conv2d or "forward" in conv.__dict__ or hooked(conv):
        return False
    params = conv._parameters
    return "weight" in params and "bias" in params and not isinstance(conv.padding, str)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels and conv.out_channels % conv.in_channels == 0


def _is_pointwise(conv: nn.Conv2d) -> bool:
    one = (1, 1)
    return conv.kernel_size == one and conv.stride == one and conv.padding == (0, 0)


@functools.lru_cache(maxsize=256)
def _plan(padding, kernel, stride, dilation) -> PaddingPlan:
    return resolve_padding(tuple(padding), tuple(kernel), tuple(stride), tuple(dilation))
