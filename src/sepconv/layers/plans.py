"""Fused inference calls of layers and blocks replayed without asking again what they may skip.

:func:`sepconv.blocks.fused.run_sequential` decides, call by call, which modules a kernel
call may replace: no hooks, eval-mode norms, plain parameters, the kernels' setting, the
launch for the input's shape... Asked on every call, those checks cost more than the kernels
at batch 1: in MobileNetV2 at batch 1 the Python between two kernel calls took 35-55 us,
1.8 ms of a 4.4 ms forward, three times its time in a loop, because the kernels evict it
from the caches between calls (docs/performance.md, run Y).

So a sequence's first call without autograd records what it did, step by step: a kernel
call as the function of its input that :func:`sepconv.kernels.dispatch.record` hands over
(its launch and its live weight tensors: their current values are read on every call), or
a module run as a whole. A later call replays the steps where nothing they depend on has
changed, which one pass of C-level comparisons establishes:

* the input's shape, strides, dtype and device, the kernels' setting and thread count;
* no autograd (``torch.no_grad`` or ``torch.inference_mode``), plain eager PyTorch, no
  global hooks;
* every module whose ``forward`` a step skipped, and the sequence itself: its class (a
  class assigned since may have another ``forward``), each entry of their ``__dict__``
  (training flag, settings such as stride or eps, hook tables) and of their parameter,
  buffer and child tables is the same object or compares equal (a one-element tensor: the
  same object), the children keep their order, no hook table has gained an entry, and
  each parameter and buffer keeps its dtype and shape (``module.to()`` replaces tensors'
  data in place).

Anything else (a new hook, ``train()``, a replaced parameter, another input size) records
the sequence afresh. A block that a sequence runs as a module (``DepthwiseSeparableBlock``,
``InvertedResidual``: ``plan_step``) is taken into the sequence's plan with its own plan's
steps and watch, so that a network's features replay as one plan under one check. A layer
whose forward is one fused call (``SeparableConv2d``...) records and replays that call the
same way (:func:`planned`).
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from itertools import chain

import torch
from torch import Tensor, nn

from sepconv.kernels import dispatch, programs
from sepconv.layers.fusion import eager_mode, hooked

Step = Callable[[Tensor], Tensor]
# (backward hooks do nothing without autograd, and plans are only for calls without it)
_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks")
# (is_cpu: `module.cuda()` swaps data in place; a replay would hand device memory to the kernels)
_meta = operator.attrgetter("dtype", "shape", "is_cpu")
_CHILDREN = operator.itemgetter("_modules")


@dataclass
class _Watch:
    """What a plan depends on in its modules, captured when it was recorded."""

    tables: list[dict]  # each module's __dict__ and child table
    copies: list[dict]  # shallow copies of them
    tensor_tables: list[dict]  # each module's parameter and buffer tables
    tensor_copies: list[dict]  # shallow copies of them
    singles: list[tuple[dict, str, str, Tensor]]  # one-element tensors: (__dict__, table, name, t)
    parents: list[dict]  # the __dict__ of each module with children
    orders: list[tuple]  # the names of those children, in order
    present: list[Tensor]  # their tensors (not None) but step counts
    metas: list[tuple]  # those tensors' (dtype, shape, is_cpu)
    hooks: list[dict]  # the modules' hook tables (empty when recorded)
    modules: list[weakref.ref]  # (weak: a plan must not keep its owner alive)
    classes: list[type]  # their classes

    @classmethod
    def of(cls, modules: Iterable[nn.Module]) -> _Watch:
        modules = list(dict.fromkeys(modules))  # (once each, in order)
        holders = [m.__dict__ for m in modules]
        tables = [t for d in holders for t in (d, d["_modules"])]
        kinds = ("_parameters", "_buffers")
        entries = [
            (d, kind, name, t) for d in holders for kind in kinds for name, t in d[kind].items()
        ]
        present = [  # (a batch norm's step count is no kernel's input)
            t for *_, name, t in entries if t is not None and name != "num_batches_tracked"
        ]
        tensor_tables = [d[kind] for d in holders for kind in kinds]
        parents = [d for d in holders if d["_modules"]]
        return cls(
            tables,
            list(map(dict.copy, tables)),
            tensor_tables,
            list(map(dict.copy, tensor_tables)),
            [e for e in entries if isinstance(e[3], Tensor) and e[3].numel() == 1],
            parents,
            list(map(tuple, map(_CHILDREN, parents))),
            present,
            list(map(_meta, present)),
            [d[n] for d in holders for n in _HOOK_TABLES],
            list(map(weakref.ref, modules)),
            list(map(type, modules)),
        )

    def unchanged(self) -> bool:
        # Dicts compare in C entry by entry, a value by identity first, else by ==, whatever
        # the entries' order: a third faster than comparing flattened tuples (run AE).
        if any(map(len, self.hooks)):
            return False
        if [type(module()) for module in self.modules] != self.classes:
            return False
        try:  # (an attribute whose == gives no truth value: an array, a tensor...)
            same = self.tables == self.copies and self.tensor_tables == self.tensor_copies
        except Exception:
            return False
        # The children's order (a Sequential runs them in it), in the current child tables.
        if not same or list(map(tuple, map(_CHILDREN, self.parents))) != self.orders:
            return False
        # A tensor that replaced another compares equal where both hold one element of
        # equal value (a larger one's == has no truth value), whatever its dtype: those
        # must be the same objects, in the current tables (a table put in place of one
        # compares equal to it by its values).
        if not all(d[kind].get(name) is t for d, kind, name, t in self.singles):
            return False
        # (the same tensors: a dtype or shape changed in place, as Module.to() does)
        return list(map(_meta, self.present)) == self.metas

    def merged(self, others: Iterable[_Watch]) -> _Watch:
        """What this watch and ``others`` watch, in one."""
        watches = [self, *others]

        def joined(name: str) -> list:
            return list(chain.from_iterable(getattr(w, name) for w in watches))

        return _Watch(*(joined(f.name) for f in fields(_Watch)))


@dataclass
class Plan:
    """A sequence's recorded steps, valid for inputs of one ``key`` while ``watch`` holds."""

    key: tuple
    steps: list[Step]
    fresh: bool  # the last step's output is a fresh tensor of the plan's own
    watch: _Watch
    layouts: list[tuple]  # each step's input (shape, strides, dtype) when recorded
    starts: list[int]  # the index of the first of the owner's modules each step computes
    owner: weakref.ref  # (weak: a plan must not keep its owner alive)
    sequence: bool  # the owner runs its modules in order (a divergence can go on with them)
    # What replays the steps: (index of its first step, callable), runs of the steps as
    # programs (one library call each, sepconv.kernels.programs), compiled at the first replay.
    runners: list[tuple[int, Step]] | None = field(default=None, compare=False, repr=False)

    def run(self, x: Tensor) -> Tensor:
        runners = self.runners
        if runners is None:
            runners = self.runners = programs.compile_steps(self.steps, self.layouts)
        layouts = self.layouts
        for index, runner in runners:
            if (x.shape, x.stride(), x.dtype) != layouts[index]:
                return self._diverged(index, x)
            x = runner(x)
        return x

    def _diverged(self, index: int, x: Tensor) -> Tensor:
        """Step ``index``'s input differs from the one it was recorded for (a module step
        before it returned another layout, shape or dtype than when recorded): the owner's
        modules from that step on run as modules, and the plan is dropped, to be recorded
        afresh. (The steps after a module step assume what it returned: replayed on another
        layout, MobileNet blocks read it with the recorded strides, run AL.)"""
        owner = self.owner()
        if not self.sequence or owner is None:  # (a layer's plan: its key fixes its input)
            raise RuntimeError(f"sepconv plan replayed on an input of another layout: {x.shape}")
        slot = _own_slot(owner)
        if slot is not None and slot.plan is self:
            slot.plan = None
        for module in list(owner._modules.values())[self.starts[index] :]:
            x = module(x)
        return x.clone() if self.fresh else x  # (the caller may add into a fresh output)

    @property
    def compiled_programs(self) -> list[programs.Program]:
        """The programs replaying runs of the steps (empty before the first replay)."""
        methods = [runner for _, runner in self.runners or []]
        return [
            r.__self__
            for r in methods
            if isinstance(getattr(r, "__self__", None), programs.Program)
        ]


class _Slot:
    """Where a module keeps its plan: an entry of its own ``__dict__`` (:data:`_SLOT`), so that
    a plan lives and dies with its module. (Kept in a global weak-keyed table, a plan whose
    watched dicts led back to the module -- a hook of an object holding the model -- kept the
    model alive for good.) Copies and pickles of the module get an empty slot of their own;
    a slot found in another module's dict (a shallow copy's) is not that module's."""

    __slots__ = ("owner", "plan")

    def __init__(self) -> None:
        self.owner: weakref.ref | None = None
        self.plan: Plan | None = None

    def __copy__(self) -> _Slot:
        return _Slot()

    def __deepcopy__(self, memo: dict) -> _Slot:
        return _Slot()

    def __reduce__(self) -> tuple:
        return (_Slot, ())


_SLOT = "_sepconv_plan"


def _own_slot(owner: nn.Module) -> _Slot | None:
    """The slot in ``owner``'s ``__dict__`` where it is ``owner``'s own, else None."""
    slot = owner.__dict__.get(_SLOT)
    if slot is None or slot.owner is None or slot.owner() is not owner:
        return None
    return slot


def plan_of(owner: nn.Module) -> Plan | None:
    """``owner``'s recorded plan, valid or not, or None."""
    slot = _own_slot(owner)
    return None if slot is None else slot.plan


def _slot_of(owner: nn.Module) -> _Slot:
    """``owner``'s own slot, put into its ``__dict__`` where it has none."""
    slot = _own_slot(owner)
    if slot is None:
        slot = owner.__dict__[_SLOT] = _Slot()
        slot.owner = weakref.ref(owner)
    return slot


def _key(x: Tensor, mode: str) -> tuple | None:
    """What a plan is recorded for under the kernels' setting ``mode``, or None where none
    may be (autograd on, a tensor subclass, not a strided CPU tensor)."""
    if torch.is_grad_enabled() or type(x) is not Tensor or x.layout != torch.strided:
        return None
    if not x.is_cpu:
        return None
    return (x.shape, x.stride(), x.dtype, mode, torch.get_num_threads())


def lookup(owner: nn.Module, x: Tensor, mode: str) -> Plan | None:
    """``owner``'s plan for ``x`` under the kernels' setting ``mode``
    (:func:`sepconv.kernels.dispatch.mode`) where it still holds, else None. The caller has
    checked plain eager PyTorch, no global hooks and ``owner``'s own hooks."""
    plan = plan_of(owner)
    if plan is None or plan.key != _key(x, mode) or not plan.watch.unchanged():
        return None
    return plan


class Recorder:
    """Collects a sequence's steps as its call runs them; :meth:`finish` keeps them as its
    plan if every step was recorded. Inactive (records nothing) where :func:`_key` says no
    plan may be made."""

    def __init__(self, owner: nn.Module, x: Tensor, mode: str, sequence: bool = False) -> None:
        self.owner, self.key, self.mode, self.sequence = owner, _key(x, mode), mode, sequence
        self.steps: list[Step] = []
        self.layouts: list[tuple] = []  # each step's input layout
        self.starts: list[int] = []  # the index of the first module each step computes
        self.skipped: list[nn.Module] = [owner]  # modules whose forward the steps replace
        self.inlined: list[_Watch] = []  # the watches of blocks' plans taken in
        self.complete = self.key is not None

    def fused(
        self, recorded: list[Step], modules: Iterable[nn.Module], x: Tensor, start: int = 0
    ) -> None:
        """A fused call on ``x`` that replaced ``modules``' forwards (the owner's from index
        ``start`` on); ``recorded``: what its :func:`~sepconv.kernels.dispatch.capture`
        collected (one step, else incomplete)."""
        if len(recorded) != 1:
            self.complete = False
            return
        self._step(recorded[0], x, start)
        self.skipped.extend(modules)

    def _step(self, step: Step, x: Tensor, start: int) -> None:
        self.steps.append(step)
        self.layouts.append((x.shape, x.stride(), x.dtype))
        self.starts.append(start)

    def module(self, module: nn.Module, x: Tensor, start: int = 0) -> None:
        """A module (the owner's at index ``start``) just run as a whole on ``x`` (its own
        ``forward``, hooks and all); a block that offers it (``plan_step``, see
        :func:`_block_step`) is taken in as its plan's steps instead, so that a replay skips
        its call and its own check."""
        taken = _block_step(module, x, self.mode) if self.complete else None
        if taken is None:
            self._step(module, x, start)
            return
        step, plan = taken
        self._step(step, x, start)
        self.skipped.append(module)
        self.inlined.append(plan.watch)

    def finish(self, fresh: bool) -> None:
        if self.complete:
            slot = _slot_of(self.owner)  # (first: the watch sees it among the dict's entries)
            watch = _Watch.of(self.skipped).merged(self.inlined)
            where = (self.layouts, self.starts, weakref.ref(self.owner), self.sequence)
            slot.plan = Plan(self.key, self.steps, fresh, watch, *where)


def planned(
    owner: nn.Module,
    x: Tensor,
    run: Callable[[Tensor], tuple[Tensor | None, bool]],
    skipped: Iterable[nn.Module],
) -> Tensor | None:
    """A layer's or block's fused forward on ``x``: ``run(x)`` gives its output (None where
    the caller falls back to the modules) and whether that output is one fused call that
    skipped the forwards of ``owner`` and ``skipped``. Without autograd such a first call is
    recorded and later calls replay it while its plan holds. For forwards that are that call
    alone (the library's own classes): the caller checks."""
    mode = _layer_mode(owner)
    plan = lookup(owner, x, mode) if mode is not None else None
    if plan is not None:
        return plan.run(x)
    if mode is None:
        return run(x)[0]
    recorder = Recorder(owner, x, mode)
    with dispatch.capture() as recorded:
        out, one_call = run(x)
    if one_call:
        recorder.fused(recorded, skipped, x)
        recorder.finish(fresh=True)
    return out


def replayed(owner: nn.Module, x: Tensor) -> Tensor | None:
    """``owner``'s output for ``x`` from the plan :func:`planned` recorded, where one holds
    for ``x``, else None. A layer may ask before its input checks: its recorded call passed
    them for inputs of the plan's key (shape, strides, dtype), and the plan's watch sees a
    change to the settings they read."""
    mode = _layer_mode(owner)
    plan = lookup(owner, x, mode) if mode is not None else None
    return None if plan is None else plan.run(x)


def _layer_mode(layer: nn.Module) -> str | None:
    """The kernels' setting where ``layer``'s call (:func:`planned`) may replay or record a
    plan: plain eager PyTorch without autograd, the kernels on, no hooks on ``layer`` (its own
    hooks run around ``forward`` whatever it does, but a plan watches for hooks on what it
    skips)."""
    if torch.is_grad_enabled() or hooked(layer):
        return None
    return eager_mode()


def _block_step(module: nn.Module, x: Tensor, mode: str) -> tuple[Step, Plan] | None:
    """``module``'s ``plan_step(x, mode)``: the function of ``x`` its ``forward`` computes
    from its plan, and that plan (which must hold now), or None. Only where skipping its
    call changes nothing: no forward hooks, ``forward`` not patched."""
    offer = getattr(type(module), "plan_step", None)
    if offer is None or "forward" in module.__dict__:
        return None
    if any(map(len, [module.__dict__[n] for n in _HOOK_TABLES])):
        return None
    return offer(module, x, mode)
