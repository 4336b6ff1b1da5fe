"""The one place where a call is offered to a fast kernel.

``sepconv.functional`` calls :func:`separable` and :func:`depthwise` on every
forward. Each returns the output when a fast kernel handles the call, or ``None``
so that the caller runs the PyTorch path. A kernel must never return a wrong
answer: anything it does not support returns ``None``.

``SEPCONV_KERNELS`` (read on every call):

- ``auto`` (default): the fastest path, measured. The first inference call of each problem
  (shapes, strides, dtype, conv arguments, threads) times the kernel, PyTorch and, for NCHW
  2d inputs, PyTorch on a channels_last copy (:mod:`sepconv.kernels.autotune`); later calls
  of that problem take the winner. Calls that record autograd history follow a rule
  instead (:func:`_pytorch_wins_separable`, :func:`_pytorch_wins_depthwise`). If the
  kernels cannot be built: warn once and use PyTorch.
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

import contextlib
import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from sepconv.functional.padding import PaddingPlan, pad_pairs
from sepconv.kernels import _build, _ops, programs

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


def tracing() -> bool:
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
    dispatch_mode, fx_tracing = _mode_checks()
    return dispatch_mode() is not None or bool(fx_tracing())


@functools.cache
def _mode_checks() -> tuple[Callable[[], object], Callable[[], bool]]:
    """The current Python dispatch mode's getter and torch.fx's is-tracing check, looked up
    once (imported on every call, tracing took 2.3 us; now 0.7 us)."""
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode
    except ImportError:  # pragma: no cover
        _get_current_dispatch_mode = lambda: None  # noqa: E731
    try:
        from torch.fx import _symbolic_trace
    except ImportError:  # pragma: no cover
        return _get_current_dispatch_mode, lambda: False
    check = getattr(_symbolic_trace, "is_fx_symbolic_tracing", None)
    if check is None:  # older torch
        check = getattr(_symbolic_trace, "is_fx_tracing", lambda: False)
    return _get_current_dispatch_mode, check


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


_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _functorch_active() -> bool:
    """Inside a torch.func transform (vmap, grad, jvp, functionalize): tensors are wrapped."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # pragma: no cover - older torch
        return False


def plain_tensors(tensors, dtype: torch.dtype) -> bool:
    """Every tensor (None allowed) is a plain strided CPU tensor of ``dtype``: no subclass,
    no sparse layout (quantized tensors have other dtypes)."""
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _TENSOR_TYPES or not t.is_cpu or t.dtype != dtype:
            return False
        if t.layout != torch.strided:
            return False
    return True


def eager_inference(x: Tensor) -> bool:
    """A call on ``x`` that records no autograd history for ``x`` and runs plain eager
    PyTorch: not tracing or compiling, no autocast, no functorch transform, no forward-mode
    AD. (The caller checks its own parameters' ``requires_grad``.) What fused inference paths
    outside the kernels (:mod:`sepconv.blocks.fused`) require before they touch ``x``."""
    return plain_eager() and not (torch.is_grad_enabled() and x.requires_grad)


def plain_eager() -> bool:
    """Not tracing or compiling, no autocast (it picks the dtype; PyTorch's path applies it),
    no functorch transform (tensors are wrapped), no forward-mode AD."""
    if tracing() or _autocast_on() or _functorch_active():
        return False
    return torch.autograd.forward_ad._current_level < 0


def kernel_input(x: Tensor) -> bool:
    """Whether the kernels may take ``x`` at all: a plain tensor of 3 or 4 dims, float32,
    float64 or bfloat16 (what else a call needs is asked when it is made)."""
    return type(x) in _TENSOR_TYPES and x.dim() in (3, 4) and x.dtype in _DTYPES


def _common_checks(x, tensors) -> bool | None:
    """Whether the call records autograd history, or None to decline it."""
    if not kernel_input(x):
        return None
    if not plain_eager():
        return None
    dtype = x.dtype
    if dtype == torch.bfloat16 and not _bf16_supported():
        return None
    if not plain_tensors((x, *tensors), dtype) or x.numel() == 0:
        return None
    grad = torch.is_grad_enabled() and (
        x.requires_grad or any(t is not None and t.requires_grad for t in tensors)
    )
    if grad and dtype == torch.bfloat16:
        return None
    return grad


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

    if _build._lib is not None:  # loaded: skip the call and its lock (every forward asks)
        return True
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


def kernels_usable() -> bool:
    """Whether the kernels are loaded, or load now (building them on first use): False where
    they cannot be built (warning once), an error under ``SEPCONV_KERNELS=on``."""
    return _load_or_decline(mode())


def _fits_int32(g) -> bool:
    sizes = (g.OH * g.OW, g.C * g.M, g.O, g.W * g.C, g.OW * max(g.O, g.C * g.M))
    return all(s < _ops.INT32_MAX for s in sizes)


def _pytorch_wins_separable(g) -> bool:
    """The rule for separable calls that record autograd history under ``auto`` (inference
    calls are measured instead, :mod:`sepconv.kernels.autotune`), fitted to forward +
    backward steps of the benchmark's 37 rows (docs/performance.md, run H): PyTorch on
    planes under 100 pixels, on channels_last planes of at most 28x28 and strided
    channels_last calls (oneDNN's channels_last kernels were as fast or faster), and on
    strided NCHW calls with output planes under 28x28 (the strided backward still scatters
    tap by tap). On AMD Zen 3 (AVX2) the kernels' steps took 0.31-0.80x PyTorch's on 56x56
    and 32x32 planes in both layouts (run N), and also on channels_last planes of 14x14 and
    28x28 at stride 1 (run T: 0.63-0.97x; 7x7 1.26x), so off Intel only channels_last planes
    under 100 pixels go to PyTorch at stride 1."""
    plane = g.OH * g.OW
    strided = g.sy > 1 or g.sx > 1
    if g.nhwc:
        return strided or plane <= (784 if _build.cpu_is_intel() else 99)
    return plane < 100 or (strided and plane < 784)


@dataclass
class _Call:
    """What is worked out once per problem: the kernel launch and ``auto``'s choices."""

    launch: _ops.Launch
    rule: bool  # auto, calls recording autograd history: use the kernel
    measured: str | None = None  # auto, inference calls: the fastest path (None: not yet)


#: Problems seen in this process (key: shapes, strides, dtype, conv arguments, threads):
#: their _Call, or None when the kernels decline them.
_calls: dict[tuple, _Call | None] = {}
_MAX_CALLS = 4096
_MISSING = object()


def _remember(key: tuple, call: _Call | None) -> _Call | None:
    if len(_calls) >= _MAX_CALLS:  # a process that sees endless new shapes: start over
        _calls.clear()
    _calls[key] = call
    return call


def _problem_key(
    kind: str, x: Tensor, tensors, stride, dilation, plan, padding_mode, *mid_params
) -> tuple:
    shapes = tuple([None if t is None else t.shape for t in tensors])  # list: no generator
    return (
        kind,
        x.shape,
        x.stride(),
        x.dtype,
        shapes,
        tuple(stride),
        tuple(dilation),
        plan,
        padding_mode,
        torch.get_num_threads(),
        *mid_params,
    )


KERNEL, PYTORCH, PYTORCH_CHANNELS_LAST = "kernel", "pytorch", "pytorch channels_last"


# ----------------------------------------------------------------------------- recording
# A caller that will replay what a call computed (sepconv.layers.plans) captures the function
# of the input that a taken path ran: record() appends it to the innermost capture.
_captures = threading.local()


@contextlib.contextmanager
def capture() -> Iterator[list[Callable[[Tensor], Tensor]]]:
    """Collects, in the list it yields, what :func:`record` is given inside the block (not
    inside a nested capture, nor under :func:`uncaptured`)."""
    stack = _capture_stack()
    stack.append([])
    try:
        yield stack[-1]
    finally:
        stack.pop()


@contextlib.contextmanager
def uncaptured() -> Iterator[None]:
    """Nothing :func:`record` is given inside the block is collected (a module's own
    ``forward`` that runs as a whole)."""
    stack = _capture_stack()
    stack.append(None)
    try:
        yield
    finally:
        stack.pop()


def _capture_stack() -> list:
    stack = getattr(_captures, "stack", None)
    if stack is None:
        stack = _captures.stack = []
    return stack


def record(fn: Callable[[Tensor], Tensor]) -> None:
    """Tell the innermost :func:`capture` (if any) that ``fn(x)`` computes what the current
    call computes for its input ``x``, as long as the problem is unchanged."""
    stack = getattr(_captures, "stack", None)
    if stack and stack[-1] is not None:
        stack[-1].append(fn)


def run_recorded(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn(x)``, :func:`record` ed first."""
    record(fn)
    return fn(x)


def _run(current: str, call: _Call, grad: bool, kernel, pytorch, x: Tensor) -> Tensor | None:
    """The output of the path ``current`` picks, or None to leave the call to PyTorch.

    ``kernel(x)``/``pytorch(x)`` run the forward each way (``pytorch`` may be None: then
    the rule decides inference calls too). The path taken is recorded (:func:`record`).
    """
    if current == "auto":
        if grad or pytorch is None:
            if not call.rule:
                return None
        else:
            if call.measured is None:
                if not _load_or_decline(current):
                    return None
                call.measured = _measure(kernel, pytorch, x)
            if call.measured == PYTORCH_CHANNELS_LAST:
                return run_recorded(partial(_via_channels_last, pytorch), x)
            if call.measured != KERNEL:
                return None
    if not _load_or_decline(current):
        return None
    return run_recorded(kernel, x)


def _measure(kernel, pytorch, x: Tensor) -> str:
    from sepconv.kernels.autotune import fastest

    candidates = {KERNEL: partial(kernel, x), PYTORCH: partial(pytorch, x)}
    if x.dim() == 4 and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1 and x.is_contiguous():
        candidates[PYTORCH_CHANNELS_LAST] = partial(_via_channels_last, pytorch, x)
    return fastest(candidates)


def _via_channels_last(pytorch, x: Tensor) -> Tensor:
    """PyTorch's convolution of a channels_last copy of NCHW ``x``, returned NCHW."""
    return pytorch(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _offer(kind: str, x: Tensor, tensors, conv_args, plan_problem, runners, reference):
    """What :func:`separable` and :func:`depthwise` share: checks, the problem's remembered
    :class:`_Call` (``plan_problem()`` makes it the first time), and ``_run``.

    ``runners`` is ``(with autograd, without)``: functions ``(tensors, launch, x)``; calls
    that record autograd history are declined where the first is None.
    """
    current = mode()
    if current == "off":
        return None
    grad = _common_checks(x, tensors)
    if grad is None or (grad and runners[0] is None):
        return None
    key = _problem_key(kind, x, tensors, *conv_args)
    call = _calls.get(key, _MISSING)
    if call is _MISSING:
        call = _remember(key, plan_problem())
    if call is None:
        return None
    kernel = partial(runners[0] if grad else runners[1], tensors, call.launch)
    pytorch = None
    if reference is not None:
        pytorch = partial(_reference_call, reference, tensors, conv_args)
    return _run(current, call, grad, kernel, pytorch, x)


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
    reference: Callable[..., Tensor] | None = None,
    mid: tuple[tuple, _ops.MidParams] | None = None,
    post: tuple[tuple, _ops.MidParams] | None = None,
) -> Tensor | None:
    """Fused depthwise+pointwise forward of ``x`` ``(N, C, *spatial)``, or ``None`` to decline.

    ``reference`` is the PyTorch path, called with the same arguments (and, with ``mid`` or
    ``post``, the norms' tensors after the biases, those of ``mid`` first, and both stages'
    parameters last), which ``auto`` times against the kernel on a problem's first
    inference call.

    ``mid``: a stage between the convolutions, ``(norm tensors, parameters)``: the batch
    norm's ``(running_mean, running_var, weight, bias)`` (all None without a norm; weight
    and bias may be None) and :data:`sepconv.kernels._ops.MidParams`. ``post``: the same
    after the pointwise convolution (a norm over its outputs, then a clamp). Inference only:
    calls that record autograd history are declined.
    """
    tensors = (depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias)
    conv_args = (stride, dilation, plan, padding_mode)
    kind, runners = "separable", _SEPARABLE
    if mid is not None or post is not None:
        mid, post = mid or NO_STAGE, post or NO_STAGE
        tensors = (*tensors, *mid[0], *post[0])
        conv_args = (*conv_args, mid[1], post[1])
        kind, runners = "separable stages", _SEPARABLE_STAGES

    def plan_problem():
        if mid is not None and not (
            _norm_fits(mid, depthwise_weight.shape[0])
            and _norm_fits(post, pointwise_weight.shape[0])
        ):
            return None
        return _plan_separable(x, depthwise_weight, pointwise_weight, *conv_args)

    return _offer(kind, x, tensors, conv_args, plan_problem, runners, reference)


def _apply_separable(tensors, launch, x):
    return _ops.SeparableFunction.apply(x, *tensors, launch.g, launch)


def _raw_separable(tensors, launch, x):
    return _ops.separable_forward_raw(x, *tensors, launch.g, launch)


_SEPARABLE = (_apply_separable, _raw_separable)


#: No stage (as ``mid`` or ``post`` of :func:`separable`): no norm, no clamp.
NO_STAGE: tuple[tuple, _ops.MidParams] = (_ops._NO_NORM, (False, 1e-5, None, None))


def _norm_fits(mid: tuple[tuple, _ops.MidParams], channels: int) -> bool:
    """A norm's tensors are one value per channel of its stage (statistics present)."""
    (mean, var, weight, bias), (norm, *_) = mid
    if not norm:
        return True
    if mean is None or var is None:
        return False
    return all(t is None or t.shape == (channels,) for t in (mean, var, weight, bias))


def _raw_separable_stages(tensors, launch, x):
    return _ops.separable_forward_raw(
        x, *tensors[:4], launch.g, launch, norm=tensors[4:8], post=tensors[8:12]
    )


_SEPARABLE_STAGES = (None, _raw_separable_stages)


@programs.lowers(_raw_separable)
@programs.lowers(_raw_separable_stages)
def _lower_separable(step: partial, builder: programs.Builder, x: programs.Value) -> programs.Value:
    """A fused separable step of a plan (:mod:`sepconv.kernels.programs`), as
    :func:`_ops.separable_forward_raw` calls the library."""
    tensors, launch = step.args
    wd, wp, bd, bp = tensors[:4]
    norms = programs.Norms(tensors[4:12]) if len(tensors) > 4 else _ops._NO_NORMS
    args = [x, wd, bd, wp, bp, programs.OUT, launch.geo, norms]
    return builder.call(programs.OP_SEP, args, _out_like(launch, x), _ops.DTYPE_CODE[x.like.dtype])


def _out_like(launch: _ops.Launch, x: programs.Value) -> Tensor:
    return programs.meta_like(launch.out_shape, launch.out_strides, x.like.dtype)


def _reference_call(reference, tensors, conv_args, x):
    return reference(x, *tensors, *conv_args)


def _plan_separable(
    x,
    depthwise_weight,
    pointwise_weight,
    stride,
    dilation,
    plan,
    padding_mode,
    mid_params=None,
    post_params=None,
):
    """The :class:`_Call` of a separable problem (``mid_params`` / ``post_params``: those of
    the stages between and after the convolutions), or None when the kernels decline it."""
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
    rule = mult > 1 or not _pytorch_wins_separable(g)
    return _Call(_ops.separable_launch(x, g, mid_params, post_params), rule)


def depthwise(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    plan: PaddingPlan,
    padding_mode: str,
    reference: Callable[..., Tensor] | None = None,
) -> Tensor | None:
    """Depthwise forward of ``x`` ``(N, C, *spatial)`` with ``weight`` ``(C*M, 1, *kernel)``,
    or ``None`` to decline; ``reference`` as in :func:`separable`."""
    conv_args = (stride, dilation, plan, padding_mode)

    def plan_problem():
        return _plan_depthwise(x, weight, *conv_args)

    return _offer("depthwise", x, (weight, bias), conv_args, plan_problem, _DEPTHWISE, reference)


def _apply_depthwise(tensors, launch, x):
    return _ops.DepthwiseFunction.apply(x, *tensors, launch.g, launch)


def _raw_depthwise(tensors, launch, x):
    return _ops.depthwise_forward_raw(x, *tensors, launch.g, launch)


_DEPTHWISE = (_apply_depthwise, _raw_depthwise)


@programs.lowers(_raw_depthwise)
def _lower_depthwise(step: partial, builder: programs.Builder, x: programs.Value) -> programs.Value:
    """A depthwise step of a plan, as :func:`_ops.depthwise_forward_raw` calls the library."""
    (wd, bd), launch = step.args
    args = [x, wd, bd, programs.OUT, launch.geo]
    code = _ops.DTYPE_CODE[x.like.dtype]
    return builder.call(programs.OP_DEPTHWISE, args, _out_like(launch, x), code)


def _plan_depthwise(x, weight, stride, dilation, plan, padding_mode):
    """The :class:`_Call` of a depthwise problem, or None when the kernels decline it."""
    rank = x.dim() - 2
    if weight.dim() != rank + 2 or weight.shape[0] % x.shape[1]:
        return None
    amounts = _amounts(x, plan, padding_mode)
    if amounts is None:
        return None
    g = _ops.geometry(
        x, tuple(weight.shape[2:]), weight.shape[0], stride, dilation, amounts, padding_mode
    )
    if g is None or not _fits_int32(g):
        return None
    mult = weight.shape[0] // x.shape[1]
    rule = mult > 1 or not _pytorch_wins_depthwise(g, x)
    return _Call(_ops.depthwise_launch(x, g), rule)


def _pytorch_wins_depthwise(g, x: Tensor) -> bool:
    """The rule for depthwise calls (one filter per channel) that record autograd history,
    fitted to forward + backward steps (docs/performance.md, run H); with a depth multiplier
    the kernels always win (oneDNN runs those 1.1-3x slower). 2d: PyTorch at stride > 1
    (the kernels took 1.2-2.2x its time), on NCHW planes under 100 pixels (1.3x), and on
    channels_last 3x3 calls with small inputs (:func:`_nhwc_3x3_kernel_bytes`); the kernels
    take channels_last 5x5 and 7x7 (0.34-0.38x) and NCHW otherwise (0.09-0.67x). On AMD
    Zen 3 (AVX2) channels_last 7x7 steps took 0.21-0.42x (run N), 0.25-0.26x (run T)."""
    if g.rank != 2:
        return False
    if g.sy > 1 or g.sx > 1:
        return True
    if g.nhwc:
        in_bytes = x.numel() * x.element_size()
        return max(g.KH, g.KW) <= 3 and in_bytes < _nhwc_3x3_kernel_bytes()
    return g.OH * g.OW < 100


def _nhwc_3x3_kernel_bytes() -> int:
    """Input bytes from which channels_last 3x3 depthwise calls recording autograd history go
    to the kernels. 16 MB where the kernels read their input as it comes (Intel, run H:
    smaller steps took 0.9-1.7x PyTorch's time; larger ones cost PyTorch fresh-allocation
    page faults, which the pooled outputs avoid); where they touch it first
    (``SEPCONV_KERNELS_PREFETCH=on``, AMD), from the size at which they do so, the
    library's ``kTouchBytes`` (8 MiB; run T, AMD Zen 3: inputs of 8.4-51 MB took
    0.61-0.92x PyTorch's time, 6.4 MB ones 0.94-1.02x, 2.4-4.8 MB ones 1.14-1.18x)."""
    if _build.prefetch_choice() == "on":
        try:
            return _build.load().sepconv_touch_bytes()
        except _build.BuildError:  # (no kernels: _run declines the call, with its warning)
            pass
    return 16 << 20
