"""A replayed plan's kernel calls as one library call (``csrc/program.h``).

A plan (:mod:`sepconv.layers.plans`) replays a sequence's steps in Python. For each kernel
call that is its tensors' pointers, an output from the pool and the ctypes call: 35-60 us
between two calls inside MobileNetV2 at batch 1, whose kernels evict that Python from the
caches (1.3 ms of an 8.7 ms forward on two threads; docs/performance.md, run AL).

At a plan's first replay, each run of its steps that are kernel calls with a registered
lowering (:func:`lowers`) compiles into a :class:`Program`: a table of steps the library runs
in one call (:func:`compile_steps`; the other steps stay as they are).
Each step's arguments refer to the program's input, its output (a fresh tensor per call), a
buffer of an arena (the values between steps, packed by their lifetimes, taken from the
output pool per call) or an entry of a table of pointers: the weights' pointers, which
:meth:`Program.run` reads on every call, and constants (the launches' geometry arrays).
The same kernels run on the same pointers as in the Python replay, so the results are the
same bits. ``SEPCONV_KERNELS_PROGRAMS=off`` keeps the Python replay.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sepconv.kernels import _build, _ops

OP_SEP, OP_POINTWISE, OP_DENSE, OP_DEPTHWISE, OP_ADD = 1, 2, 3, 4, 5
STEP_WORDS = 13  # op, dtype code, element count, threads, nine argument references
_ARGS = STEP_WORDS - 4
# Kinds of argument references, (value << 3) | kind: as csrc/program.h reads them.
_NULL, _TABLE, _ARENA, _ENDPOINT, _TABLE_ADDRESS = 0, 1, 2, 3, 4
_ALIGN = 4096  # bytes: buffers in the arena start on pages, as large allocations do


@dataclass(eq=False)
class Value:
    """A tensor a program computes, or its input: ``like`` is a meta tensor of its shape,
    strides and dtype. Compared by identity (an in-place step hands back the same one)."""

    like: Tensor


class Norms(tuple):
    """The eight norm tensors (or None) of a separable call, passed as the address of eight
    consecutive table entries."""


#: Where a call's output goes in :meth:`Builder.call`'s arguments.
OUT = object()

Lowering = Callable[[functools.partial, "Builder", Value], "Value | None"]
_LOWERINGS: dict[Callable, Lowering] = {}


def lowers(func: Callable) -> Callable[[Lowering], Lowering]:
    """Register the decorated ``lowering(step, builder, x)`` for plan steps that are
    ``functools.partial(func, ...)``: it adds the step's calls to ``builder`` and returns the
    step's output, or None where the step cannot be lowered (it then runs as it is, between
    programs)."""

    def register(lowering: Lowering) -> Lowering:
        _LOWERINGS[func] = lowering
        return lowering

    return register


def meta_like(shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype) -> Tensor:
    """A meta tensor of ``shape``, ``strides`` and ``dtype`` (a :class:`Value`'s ``like``)."""
    return torch.empty_strided(tuple(shape), tuple(strides), dtype=dtype, device="meta")


@dataclass
class _Op:
    op: int
    args: list  # Value, Tensor, ctypes array, Norms or None each
    writes: Value | None  # the value it computes (None: it writes its first argument)
    code: int = 0
    count: int = 0
    threads: int = 0


class Builder:
    """Collects a program's calls as a plan's steps are lowered, from an input like ``x``."""

    def __init__(self, x_like: Tensor) -> None:
        self.input = Value(x_like)
        self.ops: list[_Op] = []

    def lower(self, steps: Iterable[Callable], x: Value) -> Value | None:
        """The value ``steps`` compute from ``x``, their calls added; None where a step has
        no lowering or declines."""
        for step in steps:
            x = self.lower_step(step, x)
            if x is None:
                return None
        return x

    def lower_step(self, step: Callable, x: Value) -> Value | None:
        """The value ``step`` computes from ``x``, its calls added; None (and nothing added)
        where it has no lowering or declines."""
        lowering = _LOWERINGS.get(step.func) if isinstance(step, functools.partial) else None
        count = len(self.ops)
        out = None if lowering is None else lowering(step, self, x)
        if out is None:
            del self.ops[count:]  # (a block's plan lowered up to a step that declined)
        return out

    def call(self, op: int, args: list, out_like: Tensor, code: int = 0) -> Value:
        """A kernel call ``op`` on ``args`` (:data:`OUT` where its output goes); its output."""
        out = Value(out_like)
        self.ops.append(_Op(op, [out if a is OUT else a for a in args], out, code))
        return out

    def add(self, out: Value, residual: Value) -> Value | None:
        """``out += residual`` in place (float32, the same layout), or None."""
        a, b = out.like, residual.like
        same = a.shape == b.shape and _same_offsets(a, b) and a.dtype == b.dtype
        if not same or a.dtype != torch.float32 or not _dense(a) or out is residual:
            return None
        count = a.numel()
        self.ops.append(_Op(OP_ADD, [out, residual], None, count=count, threads=_threads()))
        return out

    def finish(self, output: Value) -> Program | None:
        """The program computing ``output``, or None where it would compute nothing."""
        if output is self.input or not self.ops:
            return None
        return Program(self.ops, self.input, output)


def _layout(t: Tensor) -> tuple:
    return (t.shape, t.stride(), t.dtype)


def _same_offsets(a: Tensor, b: Tensor) -> bool:
    """Every element sits at the same offset in both (strides of size-1 dimensions aside: a
    1x1 plane is contiguous and channels_last at once)."""
    return all(n == 1 or i == j for n, i, j in zip(a.shape, a.stride(), b.stride()))


def _dense(t: Tensor) -> bool:
    """The tensor's elements fill its storage without gaps (any dimension order)."""
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _threads() -> int:
    return torch.get_num_threads()


class Program:
    """A plan's calls as one library call; :meth:`run` computes the plan's output."""

    def __init__(self, ops: list[_Op], source: Value, output: Value) -> None:
        self.input_layout = _layout(source.like)
        self.output_like = output.like
        self.output_nbytes = _ops.storage_bytes(
            tuple(output.like.shape), output.like.stride(), output.like.dtype
        )
        offsets, self.arena_bytes = _arena(ops, output)
        table: list[int] = []
        self.tensors: list[Tensor] = []  # the weights, read on every call
        self.tensor_slots: list[int] = []  # their entries in the table
        self.constants: list[ctypes.Array] = []  # kept alive: the table holds their addresses

        def entry(item) -> int:
            table.append(0)
            if isinstance(item, Tensor):
                self.tensors.append(item)
                self.tensor_slots.append(len(table) - 1)
            elif item is not None:
                self.constants.append(item)
                table[-1] = ctypes.addressof(item)
            return len(table) - 1

        def reference(item) -> int:
            if item is None:
                return _NULL
            if isinstance(item, Value):
                if item is source or item is output:
                    return (int(item is output) << 3) | _ENDPOINT
                return (offsets[id(item)] << 3) | _ARENA
            if isinstance(item, Norms):
                first = len(table)
                for t in item:
                    entry(t)
                return (first << 3) | _TABLE_ADDRESS
            return (entry(item) << 3) | _TABLE

        words: list[int] = []
        for op in ops:
            refs = [reference(a) for a in op.args]
            assert len(refs) <= _ARGS, f"a step of {len(refs)} arguments (at most {_ARGS})"
            words += [op.op, op.code, op.count, op.threads, *refs, *[0] * (_ARGS - len(refs))]
        self.steps = (ctypes.c_int64 * len(words))(*words)
        self.count = len(ops)
        self.kinds = [op.op for op in ops]  # (OP_SEP...: what a call runs)
        self.entries = table  # the constants' addresses, zeros for the weights
        # The weights' pointers and the table holding them, swapped as one (a concurrent
        # call keeps the table it took).
        self.bound: tuple[list[int] | None, ctypes.Array | None] = (None, None)

    def run(self, x: Tensor) -> Tensor:
        """The steps' output for ``x`` (of the layout compiled for): a fresh tensor."""
        if _layout(x) != self.input_layout:  # (plans check it before: Plan.run)
            raise ValueError(f"input of layout {_layout(x)}, compiled for {self.input_layout}")
        tensors = self.tensors
        if not all(map(Tensor.is_contiguous, tensors)):
            # (a channels_last model's stem weight: contiguous copies for this call, as the
            # Python replay makes them, in a table of this call's own)
            tensors = [t.contiguous() for t in tensors]
            table = self._table(list(map(Tensor.data_ptr, tensors)))
        else:
            pointers = list(map(Tensor.data_ptr, tensors))
            bound, table = self.bound
            if pointers != bound:  # (the first call, or a weight's data replaced)
                table = self._table(pointers)
                self.bound = (pointers, table)
        like = self.output_like
        out = _ops.pooled_empty(tuple(like.shape), like.stride(), like.dtype, self.output_nbytes)
        size = self.arena_bytes  # (none for one call: a layer's plan)
        arena = _ops.pooled_empty((size,), (1,), torch.uint8, size) if size else None
        args = (table, x.data_ptr(), out.data_ptr(), arena.data_ptr() if size else None)
        _ops._check(_build.load().sepconv_run_program(self.steps, self.count, *args))
        return out

    def _table(self, pointers: list[int]) -> ctypes.Array:
        table = (ctypes.c_void_p * max(1, len(self.entries)))(*self.entries)
        for slot, pointer in zip(self.tensor_slots, pointers):
            table[slot] = pointer
        return table


def _arena(ops: list[_Op], output: Value) -> tuple[dict[int, int], int]:
    """Byte offsets in one arena of the values between the steps (by ``id``), and its size.

    A value takes the free buffer read longest ago (grown to the largest value it holds),
    else a new one. Free: its value was last read before the step before, and, for a value
    of :data:`_LARGE` bytes or more, :func:`_window` bytes of values were written since.
    A buffer reused at once still had its lines in the caches, both core complexes', when
    the next value's (streamed) stores reached them: MobileNetV1's batch-8 layers took up
    to 1.34x their time, MobileNetV2's batch-8 forward 1.01-1.04x with buffers of 1-4 MiB
    reused after one step (run AL). Small values reuse warm buffers."""
    last: dict[int, int] = {}  # a value's last reader
    for i, op in enumerate(ops):
        for a in op.args:
            if isinstance(a, Value):
                last[id(a)] = i
    written = [0]  # bytes of values written before each step
    for op in ops:
        written.append(written[-1] + (_nbytes(op.writes) if op.writes is not None else 0))
    window = _window()
    buffers: list[list[int]] = []  # [bytes, the step that last read its value]
    placed: dict[int, int] = {}
    for i, op in enumerate(ops):
        value = op.writes
        if value is None or value is output:
            continue
        nbytes = _nbytes(value)
        limit = written[i] - (window if nbytes >= _LARGE else 0)
        ready = [
            j for j, (_, read) in enumerate(buffers) if read < i - 1 and written[read + 1] <= limit
        ]
        j = min(ready, key=lambda j: buffers[j][1]) if ready else len(buffers)
        if not ready:
            buffers.append([0, -1])
        buffers[j] = [max(buffers[j][0], -(-nbytes // _ALIGN) * _ALIGN), last[id(value)]]
        placed[id(value)] = j
    starts, total = [], 0
    for size, _ in buffers:
        starts.append(total)
        total += size
    return {value: starts[j] for value, j in placed.items()}, total


#: Values from this size wait for :func:`_window` before their buffers are reused.
_LARGE = 1 << 20


def _nbytes(value: Value) -> int:
    like = value.like
    return _ops.storage_bytes(tuple(like.shape), like.stride(), like.dtype)


@functools.cache
def _window() -> int:
    """Bytes of values written between a large buffer's last read and its reuse: twice the
    last-level cache (32 MiB where sysfs does not say)."""
    from sepconv.analysis.peaks import _last_level_cache_bytes

    return 2 * (_last_level_cache_bytes() or 32 << 20)


def enabled() -> bool:
    """``SEPCONV_KERNELS_PROGRAMS`` is not ``off``/``0`` (read on every compile)."""
    return os.environ.get("SEPCONV_KERNELS_PROGRAMS", "").strip().lower() not in ("off", "0")


def compile_steps(
    steps: Sequence[Callable], layouts: Sequence[tuple]
) -> list[tuple[int, Callable]]:
    """What replays a plan's ``steps``, as (index of the first step, callable): each run of
    steps that lower (float32 inputs) as one program's ``run``, the others as they are.
    ``layouts[i]``: step ``i``'s input (shape, strides, dtype). All the steps as they are
    where programs are off, and a run whose arena would take more than a quarter of the
    output pool (``SEPCONV_KERNELS_POOL_MB``; 128 MiB by default: `mobilenet_v2` at batch 8
    takes 123 MiB), which would otherwise be allocated afresh and page-faulted every call."""
    if not enabled():
        return list(enumerate(steps))
    runners: list[tuple[int, Callable]] = []
    i = 0
    while i < len(steps):
        builder = Builder(meta_like(*layouts[i]))
        x, j = builder.input, i
        while j < len(steps) and layouts[i][2] == torch.float32:
            y = builder.lower_step(steps[j], x)
            if y is None:
                break
            x, j = y, j + 1
        program = builder.finish(x) if j > i else None
        if program is not None and program.arena_bytes <= _ops._pool_limit() // 4:
            runners.append((i, program.run))
        else:
            runners += [(k, steps[k]) for k in range(i, max(j, i + 1))]
        i = max(j, i + 1)
    return runners


# ----------------------------------------------------------------------------- lowerings of
# the library's own calls (the dispatcher's and the blocks' register theirs where they are)


def _conv_norm_act(op: int, launch: Callable[[dict, Tensor], tuple]) -> Lowering:
    """The lowering of a conv-norm-act step ``partial(raw, weight=..., bias=..., mid=...,
    norm=...)`` whose call is ``op(x, weight, bias, *norm, out, geo)``; ``launch(keywords,
    x_like)`` gives the raw call's geometry array and output shape, strides and bytes."""

    def lower(step: functools.partial, builder: Builder, x: Value) -> Value | None:
        kw = step.keywords
        if step.args or x.like.dim() != 4:
            return None
        geo, shape, strides, _ = launch(kw, x.like)
        args = [x, kw["weight"], kw.get("bias"), *kw.get("norm", _ops._NO_NORM), OUT, geo]
        return builder.call(op, args, meta_like(shape, strides, x.like.dtype))

    return lower


def _pointwise_geometry(kw: dict, like: Tensor) -> tuple:
    """As ``pointwise_forward_raw`` works it out (``sepconv.blocks.fused._folded_gemm``)."""
    o, nhwc = kw["weight"].shape[0], not like.is_contiguous()
    return _ops.pointwise_launch(
        tuple(like.shape), nhwc, o, tuple(kw["mid"]), _threads(), like.dtype
    )


def _dense_geometry(kw: dict, like: Tensor) -> tuple:
    """As ``dense_forward_raw`` works it out (a stem, ``sepconv.blocks.fused._conv_norm_act``)."""
    conv = (kw["stride"], kw["padding"], kw["dilation"], tuple(kw["mid"]))
    shape, nhwc = tuple(like.shape), not like.is_contiguous()
    return _ops.dense_launch(shape, nhwc, tuple(kw["weight"].shape), *conv, _threads(), like.dtype)


lowers(_ops.pointwise_forward_raw)(_conv_norm_act(OP_POINTWISE, _pointwise_geometry))
lowers(_ops.dense_forward_raw)(_conv_norm_act(OP_DENSE, _dense_geometry))
