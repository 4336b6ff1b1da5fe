"""Back to dense: :func:`to_dense` (separable and grouped convs) and :func:`fold_batchnorm`."""

from __future__ import annotations

import copy
import itertools
import warnings
from collections import OrderedDict

import torch
from torch import nn

from sepconv.conversion import _walk
from sepconv.functional.weights import expand_groups
from sepconv.layers.separable import _dense_conv_like, _SeparableConvNd

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def to_dense(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Turn separable, depthwise and grouped convolutions into equivalent dense ones (exact).

    - every ``SeparableConvNd`` with nothing between its stages becomes one dense conv
      (``SeparableConvNd.to_dense()``: an ``nn.Sequential(conv, norm, act)`` when the layer
      has a norm or activation after the pointwise stage);
    - every grouped or depthwise ``nn.ConvNd`` (sepconv's ``DepthwiseConvNd`` included)
      becomes an ungrouped conv whose weight is block diagonal (zeros off the blocks), so
      that afterwards all its weights can train.

    - every ``SeparableConvNd`` with a norm or activation between its stages becomes
      ``nn.Sequential(depthwise, mid_norm, mid_act, pointwise, norm, act)`` (identities left
      out) with the depthwise stage ungrouped as above.

    Transposed convs and subclasses of ``nn.ConvNd`` with their own forward are left as
    they are. Shared modules
    stay shared. ``inplace=False`` (default) returns a converted deep copy.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    work = model if inplace else copy.deepcopy(model)
    for site in _walk.walk(work):
        module = site.module
        new: nn.Module | None = None
        if isinstance(module, _SeparableConvNd):
            if module.has_mid_layers:
                new = _stages_to_dense(module)
                work = _walk.replace(site, new, work)
                continue
            new = module.to_dense()
            conv = new[0] if isinstance(new, nn.Sequential) else new
            if conv.groups > 1:
                ungrouped = _ungroup(conv)
                if isinstance(new, nn.Sequential):
                    new[0] = ungrouped
                else:
                    new = ungrouped
            new.train(module.training)
        elif isinstance(module, CONV_TYPES) and module.groups > 1:
            if type(module) not in _walk.DENSE_TYPES and not hasattr(module, "_plan"):
                continue  # an unknown subclass: its forward may not be a plain conv
            new = _ungroup(module)
        if new is not None:
            work = _walk.replace(site, new, work)
    return work


def _stages_to_dense(module: _SeparableConvNd) -> nn.Sequential:
    """A separable layer with mid layers as ``Sequential(depthwise, mid_norm, ...)``, its
    depthwise stage ungrouped (the norm between the stages rules out one merged conv)."""
    stages = {
        "depthwise": _ungroup(module.depthwise),
        "mid_norm": module.mid_norm,
        "mid_act": module.mid_act,
        "pointwise": _ungroup(module.pointwise)
        if module.pointwise.groups > 1
        else module.pointwise,
        "norm": module.norm,
        "act": module.act,
    }
    kept = OrderedDict(
        (name, stage) for name, stage in stages.items() if not isinstance(stage, nn.Identity)
    )
    return nn.Sequential(kept).train(module.training)


def _ungroup(conv: nn.Module) -> nn.Module:
    """An ungrouped conv equal to the grouped ``conv``, with a block-diagonal weight."""
    weight = conv.weight.detach()
    bias = conv.bias is not None
    if type(conv) in _walk.DENSE_TYPES:
        new = type(conv)(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=1,
            bias=bias,
            padding_mode=conv.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
    else:  # sepconv's padded / depthwise / pointwise convs
        new = _dense_conv_like(conv, conv.out_channels, 1, bias, weight.dim() - 2)
    with torch.no_grad():
        new.weight.copy_(expand_groups(weight, conv.groups))
        if bias:
            new.bias.copy_(conv.bias.detach())
    new.weight.requires_grad_(conv.weight.requires_grad)
    if bias:
        new.bias.requires_grad_(conv.bias.requires_grad)
    new.train(conv.training)
    return new


# ============================================================================ folding


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into that conv (exact in eval mode).

    Folded pairs: a ``nn.ConvNd`` (or a ``SeparableConvNd`` with no norm/activation after
    its pointwise stage) followed by a ``BatchNormNd`` in an ``nn.Sequential`` (or a subclass
    such as MobileNet's ``ConvBNReLU``); the ``pointwise -> norm`` and ``depthwise ->
    mid_norm`` pairs inside a ``SeparableConvNd``. The BatchNorm becomes ``nn.Identity`` and
    the conv gets ``w * g / sqrt(v + eps)`` and ``(b - m) * g / sqrt(v + eps) + beta``.

    The folded model equals the original in eval mode (BatchNorm using its running
    statistics); it is meant for inference or for fine-tuning without BatchNorm. BatchNorms
    without running statistics, and pairs where either module is shared, are left alone.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    work = model if inplace else copy.deepcopy(model)
    uses: dict[int, int] = {}
    sites = _walk.walk(work, into_separable=True)
    for site in sites:
        uses[id(site.module)] = len(site.names)
    folded = 0
    # Children before parents: a separable layer's own norm must fold first, so that a
    # BatchNorm after the layer in a Sequential finds its pointwise stage free.
    for site in reversed(sites):
        module = site.module
        if isinstance(module, _SeparableConvNd):
            for stage_name, norm_name in (("pointwise", "norm"), ("depthwise", "mid_norm")):
                stage, norm = getattr(module, stage_name), getattr(module, norm_name)
                if _foldable(norm, stage.out_channels) and uses[id(stage)] == 1:
                    _fold_into(stage, norm)
                    setattr(module, norm_name, nn.Identity())
                    folded += 1
        if isinstance(module, nn.Sequential):
            keys = list(module._modules)
            for first, second in itertools.pairwise(keys):
                conv, bn = module._modules[first], module._modules[second]
                target = _fold_target(conv)
                if target is None or not _foldable(bn, target.out_channels):
                    continue
                if (
                    uses.get(id(conv), 1) > 1
                    or uses.get(id(bn), 1) > 1
                    or uses.get(id(target), 1) > 1
                ):
                    continue
                _fold_into(target, bn)
                module._modules[second] = nn.Identity()
                folded += 1
    if folded and model.training:
        warnings.warn(
            "fold_batchnorm: the model is in training mode; the folded model equals the original in eval mode "
            "(BatchNorm with running statistics)",
            stacklevel=2,
        )
    return work


def _fold_target(module: nn.Module) -> nn.Module | None:
    """The conv whose output ``module`` returns unchanged (so a following BN can fold into it)."""
    if isinstance(module, CONV_TYPES) and (
        type(module) in _walk.DENSE_TYPES or hasattr(module, "_plan")
    ):
        return module
    if (
        isinstance(module, _SeparableConvNd)
        and isinstance(module.norm, nn.Identity)
        and isinstance(module.act, nn.Identity)
    ):
        return module.pointwise
    return None


def _foldable(bn: nn.Module, channels: int) -> bool:
    return (
        isinstance(bn, BN_TYPES)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == channels
    )


def _fold_into(conv: nn.Module, bn: nn.Module) -> None:
    weight = conv.weight
    dtype = weight.dtype
    mean = bn.running_mean.detach().to(torch.float64)
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)
    new_weight = weight.detach().to(torch.float64) * scale.reshape(-1, *(1,) * (weight.dim() - 1))
    new_bias = (bias - mean) * scale + beta
    with torch.no_grad():
        weight.copy_(new_weight.to(dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(
                new_bias.to(device=weight.device, dtype=dtype), requires_grad=weight.requires_grad
            )
        else:
            conv.bias.copy_(new_bias.to(dtype))
