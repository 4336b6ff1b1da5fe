"""Argument checks shared by every layer and functional.

Each check raises ``ValueError``/``TypeError`` that names the argument and
echoes the value it got, so a user sees at once which argument is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx._symbolic_trace as _fx

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int after checking it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def int_tuple(value: object, rank: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """Expand an int or a length-``rank`` sequence into a tuple of ints ``>= minimum``.

    Example: ``int_tuple(3, 2, "kernel_size") == (3, 3)``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of {rank} ints, got {value!r}")
    if isinstance(value, int):
        items: tuple[object, ...] = (value,) * rank
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(value)
        if len(items) != rank:
            raise ValueError(
                f"{name} must be an int or a tuple of {rank} ints, got {value!r} "
                f"({len(items)} values)"
            )
    else:
        raise TypeError(
            f"{name} must be an int or a tuple of {rank} ints, got {value!r} "
            f"({type(value).__name__})"
        )
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"{name} must hold ints, got {value!r}")
        if item < minimum:
            raise ValueError(f"{name} values must be >= {minimum}, got {value!r}")
    return tuple(int(i) for i in items)  # type: ignore[arg-type]


def padding_mode(value: object) -> str:
    """Check ``padding_mode`` is one of zeros, reflect, replicate, circular."""
    if value not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {value!r}")
    return str(value)


def divisible(numerator: int, denominator: int, what: str) -> None:
    """Raise a ValueError unless ``numerator`` is divisible by ``denominator``."""
    if numerator % denominator != 0:
        raise ValueError(f"{what}: {numerator} is not divisible by {denominator}")


# Shape checks on an fx Proxy would fail, so they are skipped while fx traces.
is_fx_tracing = getattr(_fx, "is_fx_symbolic_tracing", _fx.is_fx_tracing)


def conv_channels(in_channels: object, out_channels: object, groups: object) -> None:
    """Positive ints, both channel counts divisible by ``groups`` (as ``nn.ConvNd`` needs)."""
    positive_int(in_channels, "in_channels")
    positive_int(out_channels, "out_channels")
    positive_int(groups, "groups")
    for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
        divisible(channels, groups, f"{name}={channels} must be divisible by groups={groups}")


def check_input(x: object, rank: int, channels: int, name: str = "input") -> None:
    """Check a conv input: a tensor of rank ``rank+2`` (or unbatched ``rank+1``) with ``channels``.

    Shapes: ``(N, C, *spatial)`` or ``(C, *spatial)`` with ``len(spatial) == rank``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (rank + 1, rank + 2):
        raise ValueError(
            f"{name} must have shape (N, {channels}, {_spatial_names(rank)}) or "
            f"({channels}, {_spatial_names(rank)}), got shape {tuple(x.shape)} ({x.dim()}-d)"
        )
    if torch.jit.is_tracing():
        return  # sizes are traced values: comparing them would bake this input into the trace
    got = x.shape[-rank - 1]
    if got != channels:
        raise ValueError(
            f"{name} must have {channels} channels in dim {-rank - 1}, got shape {tuple(x.shape)} "
            f"({got} channels)"
        )


def _spatial_names(rank: int) -> str:
    return ", ".join(("L",) if rank == 1 else ("H", "W") if rank == 2 else ("D", "H", "W"))
