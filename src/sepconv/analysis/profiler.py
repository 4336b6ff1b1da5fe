"""``sepconv.profile``: run a model on an example input and report each layer's cost and time.

How it works:

1. One forward pass with a pre- and post-hook on every module records each call: its inputs,
   output, parameters, MACs and bytes (:mod:`sepconv.analysis.counting`). A call is a *row* of
   the report when no hooked call happened inside it (it is an effective leaf) and it does
   work (identity, flatten and dropout in eval are left out).
2. :class:`~sepconv.SeparableConv2d` (1d, 3d) runs its depthwise and pointwise stages as one
   fused functional call when nothing hooks its ``depthwise``/``pointwise`` children (a hook
   there makes it call them one by one), so the profiler leaves those children unhooked and
   wraps the layer's conv stages (``_conv_stages``) in the same pre/post hooks:
   the layer's conv work becomes one row of kind ``separable`` named after the layer, with the
   MACs and parameters of both stages; its ``norm``/``act`` (if any) are rows of their own.
   With a norm or activation between the stages (MobileNet style) the stages run one by one
   and are rows of kinds ``depthwise`` and ``pointwise``.
3. ``warmup`` then ``repeat`` forward passes with the hooks time each row (``perf_counter``
   around the call, no autograd recording); each row's ``forward_ms`` is the median over the
   passes. Then ``repeat`` passes without hooks give the whole model's ``forward_ms``.
4. With ``backward=True`` each row's backward is timed on its own: its recorded inputs are
   replayed through the layer with autograd on, and only ``torch.autograd.grad`` of the output
   (with respect to the inputs and the layer's parameters) is timed. ``.grad`` fields are left
   untouched. The whole model's backward is timed the same way.

Buffers (BatchNorm running statistics) are restored afterwards, so profiling a model in
training mode does not change it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sepconv.analysis import counting
from sepconv.analysis.peaks import Peaks, machine_peaks, resolve_dtype
from sepconv.analysis.report import Report, Row

Progress = Callable[[str, int, int], None]


class ProfileError(ValueError):
    """The model failed on the example input; the message names the layer and its input shape."""


@dataclass
class _Call:
    name: str
    module: nn.Module
    fn: Callable
    weights: tuple[nn.Module, ...]
    input_shapes: list[tuple[int, ...]]
    inputs: tuple = ()
    kwargs: dict = field(default_factory=dict)
    nested: bool = False
    start: float = 0.0
    elapsed: float = 0.0
    output_shape: tuple[int, ...] = ()
    macs: int = 0
    bytes: int = 0


class _Tracer:
    """Hooks every module (and the fused conv stages of separable layers) of ``model``."""

    def __init__(self, model: nn.Module, capture: bool, sync: Callable[[], None]) -> None:
        self.model = model
        self.capture = capture
        self.count = True
        self.sync = sync
        self.stack: list[_Call] = []
        self.calls: list[_Call] = []
        self.handles: list = []
        self.wrapped: list[nn.Module] = []
        root = type(model).__name__
        fused_stages: set[int] = set()
        for name, module in model.named_modules():
            if id(module) in fused_stages:
                continue  # a hook here would make its parent run the stages one by one
            label = name or root
            if isinstance(module, counting.SEPARABLE_TYPES) and module._can_fuse_stages():
                fused_stages.update(id(stage) for stage in counting.separable_modules(module))
            self.handles.append(
                module.register_forward_pre_hook(self._pre(label, module), with_kwargs=True)
            )
            self.handles.append(module.register_forward_hook(self._post(module), with_kwargs=True))
            if isinstance(module, counting.SEPARABLE_TYPES):
                self._wrap_stages(label, module)

    def _pre(self, name: str, module: nn.Module):
        weights = (module,)

        def hook(mod, args, kwargs):
            self._enter(name, mod, mod, weights, args, kwargs)

        return hook

    def _post(self, module: nn.Module):
        def hook(mod, args, kwargs, output):
            self._leave(mod, args, kwargs, output)

        return hook

    def _wrap_stages(self, name: str, module: nn.Module) -> None:
        original = module._conv_stages
        weights = counting.separable_modules(module)  # type: ignore[arg-type]

        def conv_stages(x: Tensor) -> Tensor:
            self._enter(name, module, original, weights, (x,), {})
            out = original(x)
            self._leave(module, (x,), {}, out)
            return out

        module._conv_stages = conv_stages  # type: ignore[method-assign]
        self.wrapped.append(module)

    def _enter(self, name, module, fn, weights, args, kwargs) -> None:
        if self.stack:
            self.stack[-1].nested = True
        tensors = counting.flat_tensors((args, kwargs))
        call = _Call(name, module, fn, weights, [tuple(t.shape) for t in tensors])
        if self.count and self.capture:
            call.inputs, call.kwargs = _clone(args), _clone(kwargs)
        self.stack.append(call)
        self.sync()
        call.start = time.perf_counter()

    def _leave(self, module, args, kwargs, output) -> None:
        self.sync()
        end = time.perf_counter()
        call = self.stack.pop()
        call.elapsed = end - call.start
        if self.count and not call.nested:
            outputs = counting.flat_tensors(output)
            inputs = counting.flat_tensors((args, kwargs))
            call.output_shape = tuple(outputs[0].shape) if outputs else ()
            call.macs = counting.macs_of(module, inputs, outputs[0] if outputs else None)
            call.bytes = (
                counting.tensor_bytes(inputs)
                + counting.tensor_bytes(outputs)
                + counting.weight_bytes(call.weights)
            )
        self.calls.append(call)

    def run(self, fn: Callable[[], object], count: bool) -> list[_Call]:
        """Run ``fn`` (a forward pass) and return the calls it made, innermost first."""
        self.count, self.calls, self.stack = count, [], []
        try:
            fn()
        except Exception as error:
            raise self._failure(error) from error
        return self.calls

    def _failure(self, error: Exception) -> ProfileError:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not self.stack:
            return ProfileError(
                f"the model failed on the example input: {type(error).__name__}: {message}"
            )
        call = self.stack[-1]
        shapes = ", ".join("x".join(map(str, s)) for s in call.input_shapes) or "no tensors"
        self.stack = []
        return ProfileError(
            f"layer '{call.name}' ({type(call.module).__name__}) failed on input of shape {shapes}: "
            f"{type(error).__name__}: {message}"
        )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for module in self.wrapped:
            module.__dict__.pop("_conv_stages", None)
        self.handles, self.wrapped = [], []


def profile(
    model: nn.Module,
    example_input: Tensor | tuple | list | dict,
    *,
    measure: bool = True,
    backward: bool = False,
    warmup: int = 2,
    repeat: int = 10,
    peaks: Peaks | bool | None = None,
    progress: Progress | None = None,
) -> Report:
    """Per-layer parameters, MACs, memory traffic, roofline bound and measured time of ``model``.

    Args:
        model: any ``nn.Module``; it is run as is (its train/eval mode is kept; buffers such as
            BatchNorm running statistics are restored afterwards).
        example_input: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs.
        measure: time the layers (``forward_ms``); False only counts (fast).
        backward: also time each layer's backward pass (``backward_ms``).
        warmup, repeat: untimed and timed passes; times are medians over ``repeat``.
        peaks: the machine's :class:`~sepconv.analysis.peaks.Peaks` for the roofline bound;
            None measures (once, then cached on disk) this machine's at the model's dtype;
            False leaves ``bound_ms`` empty.
        progress: called as ``progress(description, done, total)`` while measuring.

    Returns a :class:`Report`. Raises :class:`ProfileError` (a ValueError) naming the layer and
    the input shape it received when the model fails on ``example_input``.

    Example::

        report = sepconv.profile(model, torch.randn(1, 3, 224, 224))
        print(report)                  # table
        report.plot("roofline.png")
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for value, name in ((warmup, "warmup"), (repeat, "repeat")):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < (1 if name == "repeat" else 0)
        ):
            raise ValueError(
                f"{name} must be an int >= {1 if name == 'repeat' else 0}, got {value!r}"
            )
    args, kwargs = _split_input(example_input)
    tensors = counting.flat_tensors((args, kwargs))
    dtype = _model_dtype(model, tensors)
    device = next((t.device for t in (*model.parameters(), *tensors)), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    if peaks is None or peaks is True:
        peaks = machine_peaks(resolve_dtype(dtype), threads) if device.type == "cpu" else None
    elif peaks is False:
        peaks = None
    step = _Stepper(progress)

    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    with torch.no_grad():  # (as the forwards below: separable layers decide on fusing by it)
        tracer = _Tracer(model, capture=backward, sync=sync)
    try:
        with torch.no_grad():
            calls = tracer.run(lambda: model(*args, **kwargs), count=True)
            leaves = [
                c
                for c in calls
                if not c.nested and (c.fn is not c.module or counting.does_work(c.module))
            ]
            names = list(dict.fromkeys(c.name for c in leaves))
            step.total = (
                1
                + (warmup + 2 * repeat if measure else 0)
                + (len(names) + 1 if measure and backward else 0)
            )
            step("counting", 1)
            forward: dict[str, list[float]] = {n: [] for n in names}
            if measure:
                for _ in range(warmup):
                    tracer.run(lambda: model(*args, **kwargs), count=False)
                    step("warming up")
                for _ in range(repeat):
                    per_name = dict.fromkeys(names, 0.0)
                    for call in tracer.run(lambda: model(*args, **kwargs), count=False):
                        if not call.nested and call.name in per_name:
                            per_name[call.name] += call.elapsed
                    for n, seconds in per_name.items():
                        forward[n].append(seconds)
                    step("timing layers")
        tracer.remove()
        model_forward = model_backward = None
        backward_times: dict[str, float] = {}
        if measure:
            with torch.no_grad():
                model_forward = _median_ms(
                    lambda: model(*args, **kwargs), repeat, sync, lambda: step("timing the model")
                )
            if backward:
                for n in names:
                    backward_times[n] = sum(
                        _backward_ms(c, warmup, repeat, sync) for c in leaves if c.name == n
                    )
                    step(f"backward {n}")
                model_backward = _model_backward_ms(model, args, kwargs, warmup, repeat, sync)
                step("backward (model)")
    finally:
        tracer.remove()
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])

    rows = _rows(
        leaves,
        names,
        forward if measure else None,
        backward_times if backward and measure else None,
        peaks,
    )
    return Report(
        rows=rows,
        model=type(model).__name__,
        input_shapes=[tuple(t.shape) for t in tensors],
        dtype=str(dtype).removeprefix("torch."),
        threads=threads,
        peaks=peaks,
        forward_ms=model_forward,
        backward_ms=model_backward,
        model_params=sum(p.numel() for p in model.parameters()),
        repeat=repeat if measure else 0,
        warmup=warmup if measure else 0,
    )


def _rows(
    leaves: list[_Call],
    names: list[str],
    forward: dict[str, list[float]] | None,
    backward: dict[str, float] | None,
    peaks: Peaks | None,
) -> list[Row]:
    rows = []
    for name in names:
        calls = [c for c in leaves if c.name == name]
        first = calls[0]
        weights = first.weights if first.fn is not first.module else (first.module,)
        macs, nbytes = sum(c.macs for c in calls), sum(c.bytes for c in calls)
        rows.append(
            Row(
                name=name,
                kind=counting.kind_of(first.module),
                type=type(first.module).__name__,
                input_shape=first.input_shapes[0] if first.input_shapes else (),
                output_shape=first.output_shape,
                params=counting.params_of(weights),
                macs=macs,
                bytes=nbytes,
                intensity=2 * macs / nbytes if nbytes else 0.0,
                bound_ms=None if peaks is None else 1e3 * peaks.bound_seconds(2 * macs, nbytes),
                forward_ms=None if forward is None else 1e3 * statistics.median(forward[name]),
                backward_ms=None if backward is None else backward[name],
                calls=len(calls),
            )
        )
    weights_of = [
        r.time_ms if forward is not None else (r.bound_ms if peaks is not None else r.macs)
        for r in rows
    ]
    total = sum(w or 0.0 for w in weights_of)
    return [_with_share(r, (w or 0.0) / total if total else 0.0) for r, w in zip(rows, weights_of)]


def _with_share(row: Row, share: float) -> Row:
    from dataclasses import replace

    return replace(row, share=share)


class _Stepper:
    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.done, self.total = progress, 0, 1

    def __call__(self, description: str, advance: int = 1) -> None:
        self.done += advance
        if self.progress is not None:
            self.progress(description, min(self.done, self.total), self.total)


def _split_input(example_input: object) -> tuple[tuple, dict]:
    if isinstance(example_input, Tensor):
        return (example_input,), {}
    if isinstance(example_input, tuple | list):
        return tuple(example_input), {}
    if isinstance(example_input, dict):
        return (), dict(example_input)
    raise TypeError(
        f"example_input must be a tensor, a tuple/list of inputs or a dict of keyword inputs, "
        f"got {type(example_input).__name__}"
    )


def _model_dtype(model: nn.Module, tensors: list[Tensor]) -> torch.dtype:
    for t in (*model.parameters(), *model.buffers(), *tensors):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _clone(value: object) -> object:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _median_ms(
    fn: Callable[[], object], repeat: int, sync: Callable[[], None], after: Callable[[], None]
) -> float:
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        after()
    return 1e3 * statistics.median(times)


def _grad_leaves(value: object, leaves: list[Tensor]) -> object:
    """``value`` with each floating tensor replaced by a clone of a fresh leaf that requires grad."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            return value
        leaf = value.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf.clone()  # in-place layers (ReLU(inplace=True)) may not modify a leaf
    if isinstance(value, tuple | list):
        return type(value)(_grad_leaves(v, leaves) for v in value)
    if isinstance(value, dict):
        return {k: _grad_leaves(v, leaves) for k, v in value.items()}
    return value


def _time_backward(
    forward: Callable[[list[Tensor]], object],
    params: list[Tensor],
    warmup: int,
    repeat: int,
    sync: Callable[[], None],
) -> float:
    """Median milliseconds of ``autograd.grad`` of ``forward(leaves)`` (forward not timed)."""
    times = []
    for i in range(warmup + repeat):
        leaves: list[Tensor] = []
        with torch.enable_grad():
            outputs = [t for t in counting.flat_tensors(forward(leaves)) if t.requires_grad]
        targets = leaves + params
        if not outputs or not targets:
            return 0.0
        grads = [torch.ones_like(t) for t in outputs]
        sync()
        start = time.perf_counter()
        torch.autograd.grad(outputs, targets, grads, allow_unused=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _backward_ms(call: _Call, warmup: int, repeat: int, sync: Callable[[], None]) -> float:
    params = [p for m in call.weights for p in m.parameters() if p.requires_grad]
    params = list({id(p): p for p in params}.values())

    def forward(leaves: list[Tensor]) -> object:
        args = _grad_leaves(call.inputs, leaves)
        kwargs = _grad_leaves(call.kwargs, leaves)
        return call.fn(*args, **kwargs)

    return _time_backward(forward, params, max(warmup, 1), repeat, sync)


def _model_backward_ms(
    model: nn.Module, args: tuple, kwargs: dict, warmup: int, repeat: int, sync: Callable[[], None]
) -> float:
    params = [p for p in model.parameters() if p.requires_grad]

    def forward(leaves: list[Tensor]) -> object:
        return model(*_grad_leaves(args, leaves), **_grad_leaves(kwargs, leaves))

    return _time_backward(forward, params, max(warmup, 1), repeat, sync)
