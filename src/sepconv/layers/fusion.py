"""What fusing modules at inference may skip, and what it runs instead.

A fused call replaces several modules' ``forward`` calls by one kernel call. It may do so
only where no one would notice: no hooks (module or global), no patched ``forward``, no
autograd history to record, and modules whose computation the kernel reproduces exactly.
:func:`mid_stage_of` turns the modules between a depthwise and a pointwise convolution into
the :class:`~sepconv.functional.conv.MidStage` that the fused kernels run.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from sepconv.functional.conv import MidStage
from sepconv.kernels import dispatch

#: What :func:`mid_stage_of` returns where the modules must run one by one.
UNFUSED = object()
_BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_CLAMPS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


def mid_stage_of(norm: nn.Module, act: nn.Module, rank: int) -> MidStage | object:
    """The :class:`MidStage` of mid layers ``norm`` then ``act``, or ``UNFUSED``.

    Taken: an ``nn.BatchNorm{rank}d`` in eval mode with running statistics (or an
    ``nn.Identity``), then an ``nn.ReLU``, ``nn.ReLU6`` or ``nn.Hardtanh`` (or an
    ``nn.Identity``), each of exactly that class, unhooked, its ``forward`` not replaced
    and its parameters plain. Anything else (a norm in training mode, GroupNorm, SiLU...)
    runs module by module. (Attributes are read from the modules' dicts: through
    ``nn.Module.__getattr__`` this took 8 us a call.)
    """
    if not unobserved(act):
        return UNFUSED
    kind = type(act)
    if kind is nn.ReLU:
        lo, hi = 0.0, None
    elif kind in _CLAMPS:
        lo, hi = float(act.min_val), float(act.max_val)
    elif kind is nn.Identity:
        lo = hi = None
    else:
        return UNFUSED
    if type(norm) is nn.Identity:
        return UNFUSED if hooked(norm) else MidStage(lo=lo, hi=hi)
    if not is_inference_norm(norm, rank):
        return UNFUSED
    buffers, params = norm._buffers, norm._parameters
    return MidStage(
        buffers["running_mean"],
        buffers["running_var"],
        params["weight"],
        params["bias"],
        norm.eps,
        lo,
        hi,
    )


def inference_mid_stage(
    norm: nn.Module, act: nn.Module, rank: int, *recorded: nn.Module
) -> MidStage | object:
    """:func:`mid_stage_of`, or ``UNFUSED`` where the call would record autograd history
    for a parameter of ``norm`` or the ``recorded`` modules (the kernels have no backward
    for the stage)."""
    if torch.is_grad_enabled() and records_history(*recorded, norm):
        return UNFUSED
    return mid_stage_of(norm, act, rank)


def records_history(*modules: nn.Module) -> bool:
    """Whether a parameter of the modules (not their children) requires grad."""
    for module in modules:
        for p in module._parameters.values():
            if p is not None and p.requires_grad:
                return True
    return False


def is_inference_norm(norm: nn.Module, rank: int) -> bool:
    """An unhooked, unpatched ``nn.BatchNorm{rank}d`` that normalises with its running
    statistics (eval mode, statistics kept) and has plain parameters."""
    if not plain_module(norm, _BATCH_NORMS[rank]) or norm.training:
        return False
    buffers = norm._buffers
    return (
        buffers.get("running_mean") is not None
        and buffers.get("running_var") is not None
        and has_plain_weights(norm)
    )


def plain_module(module: nn.Module, cls: type) -> bool:
    """``module`` is exactly ``cls``, unhooked, its ``forward`` not patched (so that a fused
    call may skip its ``forward``)."""
    return type(module) is cls and unobserved(module)


def unobserved(module: nn.Module) -> bool:
    """No hooks on ``module`` and its ``forward`` not patched on the instance."""
    return not hooked(module) and "forward" not in module.__dict__


def has_plain_weights(module: nn.Module) -> bool:
    """``weight`` and ``bias`` are plain parameters (or a bias of None): not pruned or
    parametrized, which moves them out of ``_parameters``."""
    params = module._parameters
    return "weight" in params and "bias" in params


def hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def any_global_hooks() -> bool:
    m = _torch_module
    return bool(
        m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )


def eager_on() -> bool:
    """Plain eager PyTorch (:func:`sepconv.kernels.dispatch.plain_eager`: not tracing,
    compiling...), the kernels not turned off, no global hooks."""
    return eager_mode() is not None


def eager_mode() -> str | None:
    """The kernels' setting (:func:`sepconv.kernels.dispatch.mode`) where :func:`eager_on`
    holds, else None."""
    if not dispatch.plain_eager() or any_global_hooks():
        return None
    mode = dispatch.mode()
    return None if mode == "off" else mode
