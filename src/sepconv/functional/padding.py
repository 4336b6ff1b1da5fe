"""Padding specifications: ints, tuples, ``"valid"``, ``"same"`` (TensorFlow rules) and ``"causal"``.

A padding spec is resolved once, at construction or call time, into a
:class:`PaddingPlan`. The plan is either *static* (known amounts on each side,
independent of the input size) or *dynamic* (TensorFlow ``"same"`` with
stride > 1, where the amounts depend on the input size and are computed per call).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepconv import _validation as check

PaddingSpec = int | tuple[int, ...] | str


@dataclass(frozen=True)
class PaddingPlan:
    """How to pad the input of a convolution of rank ``len(kernel_size)``.

    Attributes:
        symmetric: per-dim amount when both sides get the same padding (passed
            straight to ``F.convNd``), else ``None``.
        pad: amounts in ``F.pad`` order ``(last_lo, last_hi, ..., first_lo, first_hi)``
            when static, else ``None``.
        dynamic: True for TensorFlow ``"same"`` whose amounts depend on the input.
        kernel_size, stride, dilation: what ``dynamic`` padding needs per call.
    """

    symmetric: tuple[int, ...] | None
    pad: tuple[int, ...] | None
    dynamic: bool
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]

    def amounts(self, spatial: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """Padding in ``F.pad`` order for an input whose spatial size is ``spatial``."""
        if self.pad is not None:
            return self.pad
        return same_pad_amounts(tuple(spatial), self.kernel_size, self.stride, self.dilation)

    @functools.cached_property
    def smallest_input(self) -> tuple[int, ...] | None:
        """Per spatial dim, the smallest input size the kernel fits in once padded (static
        plans; None for dynamic ones)."""
        if self.pad is None:
            return None
        pairs = pad_pairs(self.pad, len(self.kernel_size))
        return tuple(
            d * (k - 1) + 1 - lo - hi
            for (lo, hi), k, d in zip(pairs, self.kernel_size, self.dilation)
        )


def resolve_padding(
    padding: PaddingSpec,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> PaddingPlan:
    """Turn a user padding spec into a :class:`PaddingPlan`.

    Args:
        padding: int, tuple of ints (one per spatial dim), ``"valid"``, ``"same"``
            (output size ``ceil(input / stride)``, extra padding on the high side as in
            TensorFlow) or ``"causal"`` (1d only: all padding on the left).
        kernel_size, stride, dilation: tuples of length ``rank``.
    """
    rank = len(kernel_size)
    span = tuple(d * (k - 1) for k, d in zip(kernel_size, dilation))
    if isinstance(padding, str):
        if padding == "valid":
            return _static((0,) * (2 * rank), kernel_size, stride, dilation)
        if padding == "causal":
            if rank != 1:
                raise ValueError(
                    f"padding='causal' is only defined for 1d convolutions, got a {rank}d one"
                )
            return _static((span[0], 0), kernel_size, stride, dilation)
        if padding == "same":
            if all(s == 1 for s in stride):
                # With stride 1 the total is span, whatever the input size.
                pad: list[int] = []
                for total in reversed(span):
                    pad += [total // 2, total - total // 2]
                return _static(tuple(pad), kernel_size, stride, dilation)
            return PaddingPlan(None, None, True, kernel_size, stride, dilation)
        raise ValueError(
            f"padding must be an int, a tuple of {rank} ints, 'valid', 'same' or 'causal', got {padding!r}"
        )
    amounts = check.int_tuple(padding, rank, "padding", minimum=0)
    pad = []
    for p in reversed(amounts):
        pad += [p, p]
    return _static(tuple(pad), kernel_size, stride, dilation)


def _static(pad, kernel_size, stride, dilation) -> PaddingPlan:
    lo, hi = pad[0::2], pad[1::2]
    symmetric = tuple(reversed(lo)) if lo == hi else None
    return PaddingPlan(symmetric, tuple(pad), False, kernel_size, stride, dilation)


def same_pad_amounts(
    spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """TensorFlow ``"same"`` padding, in ``F.pad`` order, for an input of spatial size ``spatial``.

    Output size is ``ceil(n / s)``; the total padding is
    ``max((out - 1) * s + d * (k - 1) + 1 - n, 0)``, split with the extra element on the high side.
    """
    pad: list[int] = []
    for n, k, s, d in reversed(list(zip(spatial, kernel_size, stride, dilation))):
        out = (n + s - 1) // s
        total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
        pad += [total // 2, total - total // 2]
    return tuple(pad)


def pad_pairs(amounts: tuple[int, ...], rank: int) -> list[tuple[int, int]]:
    """``F.pad`` amounts (last dim first) as ``(low, high)`` per spatial dim, first dim first."""
    return [
        (amounts[2 * (rank - 1 - axis)], amounts[2 * (rank - 1 - axis) + 1]) for axis in range(rank)
    ]


def pad_input(x: torch.Tensor, plan: PaddingPlan, mode: str) -> torch.Tensor:
    """Pad ``x`` (shape ``(N, C, *spatial)``) explicitly as ``plan`` says; a no-op for zero padding.

    :mod:`sepconv.functional.conv` registers it with ``torch.fx.wrap`` so that dynamic
    padding, which reads the input size, shows as one call in a symbolic trace.
    """
    rank = len(plan.kernel_size)
    spatial = tuple(x.shape[-rank:])
    amounts = plan.amounts(spatial)
    if not any(amounts):
        return x
    if mode == "zeros":
        return F.pad(x, amounts)
    _check_mode_fits(amounts, mode, spatial)
    return F.pad(x, amounts, mode=mode)


def _check_mode_fits(amounts: tuple[int, ...], mode: str, spatial: tuple[int, ...]) -> None:
    """Reflect padding must be smaller than the input, circular padding at most its size."""
    if mode not in ("reflect", "circular"):
        return  # zeros and replicate accept any amount of padding
    for axis, (lo, hi) in enumerate(pad_pairs(amounts, len(spatial))):
        too_big = max(lo, hi) >= spatial[axis] if mode == "reflect" else max(lo, hi) > spatial[axis]
        if too_big:
            raise ValueError(
                f"padding_mode={mode!r} needs padding {'smaller than' if mode == 'reflect' else 'at most'} "
                f"the input size, got padding ({lo}, {hi}) on spatial dim {axis} of size {spatial[axis]}"
            )


def check_input_fits(spatial: tuple[int, ...], plan: PaddingPlan) -> None:
    """Raise ValueError when the padded input is smaller than the dilated kernel.

    ``spatial`` is the input's spatial size; torch would raise a RuntimeError deep in the
    conv instead, without naming the input.
    """
    if torch.jit.is_tracing():
        return  # sizes are traced values then; a Python check would bake one size into the graph
    smallest = plan.smallest_input
    if smallest is not None and all(map(operator.ge, spatial, smallest)):
        return  # the common case, answered without building the error's figures (2.6 -> 0.6 us)
    pairs = pad_pairs(plan.amounts(spatial), len(plan.kernel_size))
    for axis, (lo, hi) in enumerate(pairs):
        padded = spatial[axis] + lo + hi
        span = plan.dilation[axis] * (plan.kernel_size[axis] - 1) + 1
        if padded < span:
            raise ValueError(
                f"input spatial size {tuple(spatial)} is too small: spatial dim {axis} is {padded} "
                f"after padding but the (dilated) kernel spans {span}"
            )
