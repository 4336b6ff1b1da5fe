"""Parameters and multiply-accumulates (MACs) of standard, grouped, depthwise, pointwise,
separable and transposed convolutions.

Conventions: ``kernel_size``, ``output_size`` and ``input_size`` are an int (same in every
spatial dim) or a tuple (one per dim); ``batch`` multiplies MACs. One MAC is one multiply
and one add; FLOP counters such as ``torch.utils.flop_counter`` report 2 FLOPs per MAC.

Seed 004's example: a 3x3 conv from a 7x7x3 input to 128 filters (no padding, 5x5 output)
costs ``5*5*3*3*3*128 = 86,400`` MACs; the separable one ``675 + 9,600 = 10,275``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sepconv import _validation as check

Size = int | tuple[int, ...]


def _tuple(value: Size, rank: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    return check.int_tuple(value, rank, name, minimum=minimum)


def _rank(*sizes: Size) -> int:
    """Spatial rank: the length of the first tuple among ``sizes``, else 2."""
    for size in sizes:
        if isinstance(size, tuple | list):
            return len(size)
    return 2


def conv_output_size(
    input_size: Size,
    kernel_size: Size,
    stride: Size = 1,
    padding: Size | str = 0,
    dilation: Size = 1,
) -> tuple[int, ...]:
    """Spatial output size of a conv: ``floor((n + 2p - d(k-1) - 1) / s) + 1`` per dim.

    ``padding="same"`` gives ``ceil(n / s)`` (TensorFlow), ``"valid"`` means 0.
    """
    rank = _rank(
        input_size, kernel_size, stride, dilation, padding if not isinstance(padding, str) else 0
    )
    n, k = _tuple(input_size, rank, "input_size"), _tuple(kernel_size, rank, "kernel_size")
    s, d = _tuple(stride, rank, "stride"), _tuple(dilation, rank, "dilation")
    if padding == "same":
        return tuple(-(-ni // si) for ni, si in zip(n, s))
    p = (0,) * rank if padding == "valid" else _tuple(padding, rank, "padding", minimum=0)  # type: ignore[arg-type]
    out = tuple(
        (ni + 2 * pi - di * (ki - 1) - 1) // si + 1 for ni, ki, si, pi, di in zip(n, k, s, p, d)
    )
    if min(out) < 1:
        raise ValueError(
            f"input_size {input_size!r} is too small for kernel_size {kernel_size!r}: output {out}"
        )
    return out


def conv_params(
    in_channels: int, out_channels: int, kernel_size: Size, groups: int = 1, bias: bool = True
) -> int:
    """``O * (C/G) * prod(K) (+ O)``: weights (and biases) of a (grouped) conv."""
    check.conv_channels(in_channels, out_channels, groups)
    k = _tuple(kernel_size, _rank(kernel_size), "kernel_size")
    return out_channels * (in_channels // groups) * math.prod(k) + (out_channels if bias else 0)


def conv_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: Size,
    output_size: Size,
    groups: int = 1,
    batch: int = 1,
) -> int:
    """``N * prod(out) * O * (C/G) * prod(K)``: MACs of a (grouped) conv (bias adds excluded)."""
    check.conv_channels(in_channels, out_channels, groups)
    rank = _rank(kernel_size, output_size)
    k, out = _tuple(kernel_size, rank, "kernel_size"), _tuple(output_size, rank, "output_size")
    return (
        check.positive_int(batch, "batch")
        * math.prod(out)
        * out_channels
        * (in_channels // groups)
        * math.prod(k)
    )


def conv_transpose_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: Size,
    input_size: Size,
    groups: int = 1,
    batch: int = 1,
) -> int:
    """``N * prod(in) * C * (O/G) * prod(K)``: every input element meets every kernel tap once."""
    check.conv_channels(in_channels, out_channels, groups)
    rank = _rank(kernel_size, input_size)
    k, n = _tuple(kernel_size, rank, "kernel_size"), _tuple(input_size, rank, "input_size")
    return (
        check.positive_int(batch, "batch")
        * math.prod(n)
        * in_channels
        * (out_channels // groups)
        * math.prod(k)
    )


def depthwise_params(
    in_channels: int, kernel_size: Size, depth_multiplier: int = 1, bias: bool = True
) -> int:
    """``C*M * prod(K) (+ C*M)``."""
    mid = in_channels * check.positive_int(depth_multiplier, "depth_multiplier")
    return conv_params(in_channels, mid, kernel_size, groups=in_channels, bias=bias)


def depthwise_macs(
    in_channels: int,
    kernel_size: Size,
    output_size: Size,
    depth_multiplier: int = 1,
    batch: int = 1,
) -> int:
    """``N * prod(out) * C*M * prod(K)``."""
    mid = in_channels * check.positive_int(depth_multiplier, "depth_multiplier")
    return conv_macs(in_channels, mid, kernel_size, output_size, groups=in_channels, batch=batch)


def pointwise_params(
    in_channels: int, out_channels: int, groups: int = 1, bias: bool = True
) -> int:
    """``O * C/G (+ O)``."""
    return conv_params(in_channels, out_channels, 1, groups=groups, bias=bias)


def pointwise_macs(
    in_channels: int, out_channels: int, output_size: Size, groups: int = 1, batch: int = 1
) -> int:
    """``N * prod(out) * O * C/G``."""
    rank = _rank(output_size)
    return conv_macs(
        in_channels, out_channels, (1,) * rank, output_size, groups=groups, batch=batch
    )


def separable_params(
    in_channels: int,
    out_channels: int,
    kernel_size: Size,
    depth_multiplier: int = 1,
    bias: bool = True,
) -> int:
    """``C*M*prod(K) + C*M*O`` (+ ``C*M + O`` biases): ``C*(K*K + O)`` for M=1 without bias."""
    mid = in_channels * depth_multiplier
    return depthwise_params(in_channels, kernel_size, depth_multiplier, bias) + pointwise_params(
        mid, out_channels, bias=bias
    )


def separable_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: Size,
    output_size: Size,
    depth_multiplier: int = 1,
    batch: int = 1,
) -> int:
    """``N * prod(out) * C*M * (prod(K) + O)``: ``W*H*C*(K*K + O)`` for M=1, N=1."""
    mid = in_channels * depth_multiplier
    return depthwise_macs(
        in_channels, kernel_size, output_size, depth_multiplier, batch
    ) + pointwise_macs(mid, out_channels, output_size, batch=batch)


@dataclass(frozen=True)
class Cost:
    """Parameters and MACs of one layer form."""

    params: int
    macs: int


@dataclass(frozen=True)
class Comparison:
    """Standard, depthwise, pointwise and separable costs of one conv shape.

    ``separable`` is ``depthwise`` plus ``pointwise``; the ratios are separable / standard.
    """

    output_size: tuple[int, ...]
    standard: Cost
    depthwise: Cost
    pointwise: Cost
    separable: Cost

    @property
    def params_ratio(self) -> float:
        return self.separable.params / self.standard.params

    @property
    def macs_ratio(self) -> float:
        return self.separable.macs / self.standard.macs


def compare(
    in_channels: int,
    out_channels: int,
    kernel_size: Size,
    input_size: Size,
    stride: Size = 1,
    padding: Size | str = 0,
    dilation: Size = 1,
    depth_multiplier: int = 1,
    bias: bool = True,
    batch: int = 1,
) -> Comparison:
    """Costs of a standard conv and of its depthwise-separable replacement.

    Example (seed 003): ``compare(10, 32, 3, 50).standard.params == 2912`` and
    ``.separable.params == 452``; (seed 004) ``compare(3, 128, 3, 7).standard.macs == 86400``,
    ``.separable.macs == 10275``.
    """
    out = conv_output_size(input_size, kernel_size, stride, padding, dilation)
    mid = in_channels * depth_multiplier
    depthwise = Cost(
        depthwise_params(in_channels, kernel_size, depth_multiplier, bias),
        depthwise_macs(in_channels, kernel_size, out, depth_multiplier, batch),
    )
    pointwise = Cost(
        pointwise_params(mid, out_channels, bias=bias),
        pointwise_macs(mid, out_channels, out, batch=batch),
    )
    return Comparison(
        output_size=out,
        standard=Cost(
            conv_params(in_channels, out_channels, kernel_size, bias=bias),
            conv_macs(in_channels, out_channels, kernel_size, out, batch=batch),
        ),
        depthwise=depthwise,
        pointwise=pointwise,
        separable=Cost(depthwise.params + pointwise.params, depthwise.macs + pointwise.macs),
    )
