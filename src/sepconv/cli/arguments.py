"""Converters for command-line values, shared by the subcommands.

Each raises ``argparse.ArgumentTypeError`` (for ``type=``) with a message that echoes the
value; :func:`parse_shape` raises ValueError for callers that check after parsing.
"""

from __future__ import annotations

import argparse


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x224x224" -> (1, 3, 224, 224)`` (also ``,`` or ``×`` between the sizes)."""
    parts = text.strip().lower().replace("×", "x").replace(",", "x").split("x")
    if not text.strip() or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{text!r} is not a shape of positive ints like 1x3x32x32")
    return tuple(int(p) for p in parts)


def shape(text: str) -> tuple[int, ...]:
    """``type=`` for a tensor shape such as ``1x3x32x32``."""
    try:
        return parse_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    """``type=`` for an int >= 1."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """``type=`` for an int >= 0."""
    value = _int(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """``type=`` for a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
