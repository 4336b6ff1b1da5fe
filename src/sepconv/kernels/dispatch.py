"""The one place where a call is offered to a fast kernel.

``sepconv.functional`` calls :func:`separable` and :func:`depthwise` on every
forward. Each returns the output when a fast kernel handles the call, or ``None``
so that the caller runs the PyTorch path. A kernel must never return a wrong
answer: anything it does not support returns ``None``.

``SEPCONV_KERNELS`` (read on every call):

- ``auto`` (default): use the C++ kernels where they are faster than PyTorch (see
  docs/performance.md: not for small output planes with little work, nor channels_last 2d
  depthwise with small outputs); if they cannot be built, warn once and use PyTorch.
- ``on``: use the kernels for every call they support; raise if they cannot be built.
- ``off``: always the PyTorch path (the reference).

Declined (PyTorch runs): anything but CPU float32/float64 (and bfloat16 without
autograd, where the CPU has native bfloat16), 3d, tensor subclasses, functorch
transforms, forward-mode AD, TorchScript/tracing/``torch.fx``/``torch.compile`` (so
that exports stay standard), active Python dispatch or function modes (FLOP counters,
fake tensors), padding PyTorch would reject, and sizes beyond 32-bit
BLAS arguments.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from sepconv.functional.padding import PaddingPlan, pad_pairs

_MODES = ("auto", "on", "off")
_warned: set[str] = set()
_bf16_ok: bool | None = None


def mode() -> str:
    """The current ``SEPCONV_KERNELS`` setting (``auto`` when unset or unknown)."""
    value = os.environ.get("SEPCONV_KERNELS", "auto").strip().lower() or "auto"
    if value not in _MODES:
        _warn_once("env", f"SEPCONV_KERNELS={value!r} is not one of auto|on|off; using 'auto'")
        return "auto"
    return value


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _tracing() -> bool:
    """Tracing, compiling, or a Python dispatch/function mode (FlopCounterMode, FakeTensorMode,
    profilers built on modes...) that expects to see the standard aten ops."""
    # First, and alone: Dynamo folds is_compiling() to True without a graph break, so it
    # never traces into the checks below (some of which it cannot trace).
    if torch.compiler.is_compiling():
        return True
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    if torch._C._is_torch_function_mode_enabled():
        return True
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if _get_current_dispatch_mode() is not None:
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from torch.fx import _symbolic_trace
    except ImportError:  # pragma: no cover
        return False
    check = getattr(_symbolic_trace, "is_fx_symbolic_tracing", None)
    if check is None:  # older torch
        check = getattr(_symbolic_trace, "is_fx_tracing", lambda: False)
    return bool(check())


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # pragma: no cover - torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def _bf16_supported() -> bool:
    global _bf16_ok
    if _bf16_ok is None:
        try:
            _bf16_ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            _bf16_ok = False
    return _bf16_ok


def _plain(t: Tensor | None, dtype: torch.dtype) -> bool:
    if t is None:
        return True
    if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        return False
    if t.device.type != "cpu" or t.layout != torch.strided or t.dtype != dtype or t.is_quantized:
        return False
    try:
        if torch._C._functorch.is_functorch_wrapped_tensor(t):
            return False
    except AttributeError:  # pragma: no cover
        pass
    return True


def _common_checks(x, tensors) -> tuple[bool, bool] | None:
    """``(ok, grad_needed)``-style pre-checks; None to decline."""
    if not isinstance(x, torch.Tensor) or _tracing() or x.dim() not in (3, 4):
        return None
    if _autocast_on():  # autocast picks the conv's dtype; PyTorch's path applies it
        return None
    dtype = x.dtype
    if dtype not in (torch.float32, torch.float64, torch.bfloat16):
        return None
    if dtype == torch.bfloat16 and not _bf16_supported():
        return None
    if not all(_plain(t, dtype) for t in (x, *tensors)):
        return None
    if x.numel() == 0:
        return None
    fw_level = getattr(torch.autograd.forward_ad, "_current_level", -1)
    if fw_level >= 0:
        return None
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *tensors))
    if grad and dtype == torch.bfloat16:
        return None
    return True, grad


def _amounts(x: Tensor, plan: PaddingPlan, padding_mode: str) -> tuple[int, ...] | None:
    rank = x.dim() - 2
    spatial = tuple(x.shape[2:])
    amounts = tuple(int(a) for a in plan.amounts(spatial))
    if len(amounts) != 2 * rank or any(a < 0 for a in amounts):
        return None
    if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
        return None
    if padding_mode != "zeros":
        for (lo, hi), size in zip(pad_pairs(amounts, rank), spatial):
            # Reflect/circular beyond the input: the PyTorch path raises its error. Replicate
            # beyond it (rare): the PyTorch path runs it.
            if padding_mode == "reflect" and max(lo, hi) >= size:
                return None
            if max(lo, hi) > size:
                return None
    return amounts


def _load_or_decline(current: str) -> bool:
    from sepconv.kernels import _build

    try:
        _build.load()
        return True
    except _build.BuildError as error:
        if current == "on":
            raise RuntimeError(
                f"SEPCONV_KERNELS=on but the C++ kernels are unavailable: {error}"
            ) from error
        _warn_once(
            "build",
            f"sepconv: fast CPU kernels unavailable, using the PyTorch path ({str(error).splitlines()[0]})",
        )
        return False


def _fits_int32(g) -> bool:
    from sepconv.kernels._ops import INT32_MAX

    sizes = (g.OH * g.OW, g.C * g.M, g.O, g.W * g.C, g.OW * max(g.O, g.C * g.M))
    return all(s < INT32_MAX for s in sizes)


def _pytorch_wins_separable(g) -> bool:
    """Where ``auto`` leaves a separable call to PyTorch, from the benchmark (see
    docs/performance.md): small output planes (at most 28x28) with little work, and tiny
    planes (under 100 pixels), where oneDNN's kernels beat the fused kernel's per-channel
    overhead."""
    plane = g.OH * g.OW
    flops = 2.0 * g.N * plane * g.C * g.M * (g.O // g.G)
    return plane <= 784 and (plane < 100 or flops < 5e8)


def separable(
    x: Tensor,
    depthwise_weight: Tensor,
    pointwise_weight: Tensor,
    depthwise_bias: Tensor | None,
    pointwise_bias: Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    plan: PaddingPlan,
    padding_mode: str,
) -> Tensor | None:
    """Fused depthwise+pointwise forward of ``x`` ``(N, C, *spatial)``, or ``None`` to decline."""
    current = mode()
    if current == "off":
        return None
    checked = _common_checks(
        x, (depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias)
    )
    if checked is None:
        return None
    _, grad = checked
    rank = x.dim() - 2
    mid = depthwise_weight.shape[0]
    out_channels, per_group = pointwise_weight.shape[0], pointwise_weight.shape[1]
    if depthwise_weight.dim() != rank + 2 or pointwise_weight.dim() != rank + 2:
        return None
    if mid % x.shape[1] or mid % per_group:
        return None
    groups = mid // per_group
    mult = mid // x.shape[1]
    if out_channels % groups or (groups > 1 and per_group % mult):
        return None  # a pointwise group would split one input channel's filters
    amounts = _amounts(x, plan, padding_mode)
    if amounts is None:
        return None
    from sepconv.kernels import _ops

    g = _ops.geometry(
        x,
        tuple(depthwise_weight.shape[2:]),
        mid,
        stride,
        dilation,
        amounts,
        padding_mode,
        out_channels,
        groups,
    )
    if g is None or not _fits_int32(g):
        return None
    # With a depth multiplier PyTorch leaves its specialised depthwise kernels (3-10x slower
    # than the fused kernel at every size measured), so only M == 1 may go to PyTorch.
    if current == "auto" and mult == 1 and _pytorch_wins_separable(g):
        return None
    if not _load_or_decline(current):
        return None
    if grad:
        return _ops.SeparableFunction.apply(
            x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, g
        )
    return _ops.separable_forward_raw(
        x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, g
    )


def depthwise(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    plan: PaddingPlan,
    padding_mode: str,
) -> Tensor | None:
    """Depthwise forward of ``x`` ``(N, C, *spatial)`` with ``weight`` ``(C*M, 1, *kernel)``, or ``None``."""
    current = mode()
    if current == "off":
        return None
    checked = _common_checks(x, (weight, bias))
    if checked is None:
        return None
    _, grad = checked
    rank = x.dim() - 2
    if weight.dim() != rank + 2 or weight.shape[0] % x.shape[1]:
        return None
    # oneDNN is already fast on channels_last 2d depthwise; the kernel only wins there when the
    # output is large enough for fresh-allocation page faults to dominate (the kernel reuses
    # pooled outputs). See docs/performance.md.
    # Not with a depth multiplier, which oneDNN runs 1.1-3x slower than the kernel.
    mult = weight.shape[0] // x.shape[1]
    channels_last_2d = rank == 2 and x.stride(1) == 1 and x.shape[1] > 1
    out_bytes = x.numel() * mult * x.element_size()
    if current == "auto" and channels_last_2d and mult == 1 and out_bytes < (16 << 20):
        return None
    amounts = _amounts(x, plan, padding_mode)
    if amounts is None:
        return None
    from sepconv.kernels import _ops

    g = _ops.geometry(
        x, tuple(weight.shape[2:]), weight.shape[0], stride, dilation, amounts, padding_mode
    )
    if g is None or not _fits_int32(g) or not _load_or_decline(current):
        return None
    if grad:
        return _ops.DepthwiseFunction.apply(x, weight, bias, g)
    return _ops.depthwise_forward_raw(x, weight, bias, g)
