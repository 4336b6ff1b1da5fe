"""Plain NumPy convolutions: the ground truth of the tests.

Written for reading, not speed: pad, then for each kernel tap add the strided
window of the input times that tap's weights. Everything is computed in float64.
The padding rules are implemented here again, independently of
:mod:`sepconv.functional.padding`, so that a bug there cannot hide in both.

Shapes: ``x`` ``(N, C, *spatial)``; conv weight ``(O, C/G, *K)``;
transposed-conv weight ``(C, O/G, *K)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

_NUMPY_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _per_dim(value: int | Sequence[int], rank: int) -> tuple[int, ...]:
    return (value,) * rank if isinstance(value, int) else tuple(value)


def padding_pairs(
    padding: int | Sequence | str,
    spatial: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> list[tuple[int, int]]:
    """``(low, high)`` padding per spatial dim.

    ``padding`` is an int, one int per dim, one ``(low, high)`` pair per dim, ``"valid"``,
    ``"same"`` (TensorFlow: output ``ceil(n/s)``, odd extra on the high side) or
    ``"causal"`` (``d*(k-1)`` on the low side).
    """
    rank = len(spatial)
    if padding == "valid":
        return [(0, 0)] * rank
    if padding == "causal":
        return [(d * (k - 1), 0) for k, d in zip(kernel, dilation)]
    if padding == "same":
        pairs = []
        for n, k, s, d in zip(spatial, kernel, stride, dilation):
            out = -(-n // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
            pairs.append((total // 2, total - total // 2))
        return pairs
    if isinstance(padding, int):
        return [(padding, padding)] * rank
    return [(p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in padding]


def conv(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Grouped convolution (cross-correlation, as in PyTorch) of any rank.

    ``x`` ``(N, C, *spatial)``, ``weight`` ``(O, C/G, *K)``, ``bias`` ``(O,)`` -> ``(N, O, *out)``,
    ``out = floor((n + lo + hi - d*(k-1) - 1) / s) + 1``.
    """
    x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    rank = weight.ndim - 2
    kernel = weight.shape[2:]
    stride, dilation = _per_dim(stride, rank), _per_dim(dilation, rank)
    pairs = padding_pairs(padding, x.shape[2:], kernel, stride, dilation)
    padded = np.pad(x, [(0, 0), (0, 0), *pairs], mode=_NUMPY_MODES[padding_mode])
    out_size = [
        (n - d * (k - 1) - 1) // s + 1
        for n, k, s, d in zip(padded.shape[2:], kernel, stride, dilation)
    ]
    batch, channels, out_channels = x.shape[0], x.shape[1], weight.shape[0]
    in_per_group, out_per_group = channels // groups, out_channels // groups
    out = np.zeros((batch, out_channels, *out_size))
    for g in range(groups):
        x_g = padded[:, g * in_per_group : (g + 1) * in_per_group]
        w_g = weight[g * out_per_group : (g + 1) * out_per_group]
        for tap in itertools.product(*(range(k) for k in kernel)):
            window = x_g[
                (
                    slice(None),
                    slice(None),
                    *tuple(
                        slice(t * d, t * d + s * (o - 1) + 1, s)
                        for t, d, s, o in zip(tap, dilation, stride, out_size)
                    ),
                )
            ]
            out[:, g * out_per_group : (g + 1) * out_per_group] += np.einsum(
                "nc...,oc->no...", window, w_g[(slice(None), slice(None), *tap)]
            )
    if bias is not None:
        out += np.asarray(bias, np.float64).reshape(1, -1, *([1] * rank))
    return out


def conv_transpose(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> np.ndarray:
    """Grouped transposed convolution, by its definition: each input element scatters its
    kernel-weighted copy to ``i*s + t*d``, then ``padding`` is cropped from both ends.

    ``x`` ``(N, C, *spatial)``, ``weight`` ``(C, O/G, *K)`` -> ``(N, O, *out)``,
    ``out = (n - 1)*s - 2*p + d*(k - 1) + output_padding + 1``.
    """
    x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    rank = weight.ndim - 2
    kernel = weight.shape[2:]
    stride, dilation = _per_dim(stride, rank), _per_dim(dilation, rank)
    padding, output_padding = _per_dim(padding, rank), _per_dim(output_padding, rank)
    spatial = x.shape[2:]
    full_size = [
        (n - 1) * s + d * (k - 1) + 1 + op
        for n, s, d, k, op in zip(spatial, stride, dilation, kernel, output_padding)
    ]
    batch, channels = x.shape[:2]
    out_per_group, in_per_group = weight.shape[1], channels // groups
    full = np.zeros((batch, out_per_group * groups, *full_size))
    for g in range(groups):
        x_g = x[:, g * in_per_group : (g + 1) * in_per_group]
        w_g = weight[g * in_per_group : (g + 1) * in_per_group]
        for tap in itertools.product(*(range(k) for k in kernel)):
            target = (
                slice(None),
                slice(g * out_per_group, (g + 1) * out_per_group),
                *tuple(
                    slice(t * d, t * d + s * (n - 1) + 1, s)
                    for t, d, s, n in zip(tap, dilation, stride, spatial)
                ),
            )
            full[target] += np.einsum("nc...,co->no...", x_g, w_g[(slice(None), slice(None), *tap)])
    crop = (
        slice(None),
        slice(None),
        *tuple(slice(p, size - p) for p, size in zip(padding, full_size)),
    )
    out = full[crop]
    if bias is not None:
        out = out + np.asarray(bias, np.float64).reshape(1, -1, *([1] * rank))
    return out


def depthwise_conv(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Depthwise conv: ``weight`` ``(C*M, 1, *K)``; output channel ``c*M + m`` reads input channel ``c``."""
    return conv(
        x, weight, bias, stride, padding, dilation, groups=x.shape[1], padding_mode=padding_mode
    )


def separable_conv(
    x: np.ndarray,
    depthwise_weight: np.ndarray,
    pointwise_weight: np.ndarray,
    depthwise_bias: np.ndarray | None = None,
    pointwise_bias: np.ndarray | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
    *,
    mid_norm: tuple | None = None,
    mid_clamp: tuple[float | None, float | None] | None = None,
) -> np.ndarray:
    """Depthwise conv, then pointwise conv with ``pointwise_weight`` ``(O, C*M/G, 1, ..., 1)``.

    Between them (MobileNet style, at inference): ``mid_norm`` ``(running_mean, running_var,
    weight, bias, eps)`` (each ``(C*M,)``; weight and bias may be None), then ``mid_clamp``
    ``(lo, hi)`` (either None: open on that side).
    """
    mid = depthwise_conv(
        x, depthwise_weight, depthwise_bias, stride, padding, dilation, padding_mode
    )
    if mid_norm is not None:
        mid = batch_norm_inference(mid, *mid_norm)
    if mid_clamp is not None and any(bound is not None for bound in mid_clamp):
        mid = np.clip(mid, *mid_clamp)
    pointwise_weight = np.asarray(pointwise_weight, np.float64)
    groups = mid.shape[1] // pointwise_weight.shape[1]
    return conv(mid, pointwise_weight, pointwise_bias, groups=groups)


def batch_norm_inference(
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> np.ndarray:
    """Batch norm with running statistics of ``x`` ``(N, C, *spatial)``: per channel
    ``(x - mean) / sqrt(var + eps) * weight + bias`` (weight 1 and bias 0 when None)."""
    x = np.asarray(x, np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)

    def per_channel(v, default: float) -> np.ndarray | float:
        return default if v is None else np.asarray(v, np.float64).reshape(shape)

    out = (x - per_channel(mean, 0.0)) / np.sqrt(per_channel(var, 1.0) + eps)
    return out * per_channel(weight, 1.0) + per_channel(bias, 0.0)
