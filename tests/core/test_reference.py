"""The NumPy reference against PyTorch's own convolutions (so the ground truth is itself checked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sepconv import reference
from tests.conftest import assert_close_to_reference
from tests.strategies import conv_cases

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@given(case=conv_cases(modes=("zeros",)), groups=st.integers(1, 3))
def test_grouped_conv_matches_torch(case, groups):
    channels, out_channels = case.in_channels * groups, case.out_channels * groups
    x = torch.randn(case.batch, channels, *case.spatial, dtype=torch.float64)
    w = torch.randn(out_channels, case.in_channels, *case.kernel_size, dtype=torch.float64)
    b = torch.randn(out_channels, dtype=torch.float64) if case.bias else None
    pairs = reference.padding_pairs(
        case.padding, case.spatial, case.kernel_size, case.stride, case.dilation
    )
    pad = [amount for lo_hi in reversed(pairs) for amount in lo_hi]
    expected = CONV[case.rank](F.pad(x, pad), w, b, case.stride, 0, case.dilation, groups)
    actual = reference.conv(
        x.numpy(),
        w.numpy(),
        None if b is None else b.numpy(),
        case.stride,
        case.padding,
        case.dilation,
        groups,
    )
    assert_close_to_reference(expected, actual)


@given(case=conv_cases(modes=("reflect", "replicate", "circular")))
def test_padding_modes_match_torch(case):
    x = torch.randn(case.batch, case.in_channels, *case.spatial, dtype=torch.float64)
    w = torch.randn(case.out_channels, case.in_channels, *case.kernel_size, dtype=torch.float64)
    pairs = reference.padding_pairs(
        case.padding, case.spatial, case.kernel_size, case.stride, case.dilation
    )
    pad = [amount for lo_hi in reversed(pairs) for amount in lo_hi]
    padded = (
        F.pad(x, pad) if case.padding_mode == "zeros" else F.pad(x, pad, mode=case.padding_mode)
    )
    expected = CONV[case.rank](padded, w, None, case.stride, 0, case.dilation)
    actual = reference.conv(
        x.numpy(),
        w.numpy(),
        None,
        case.stride,
        case.padding,
        case.dilation,
        padding_mode=case.padding_mode,
    )
    assert_close_to_reference(expected, actual)


@given(
    rank=st.integers(1, 3),
    groups=st.integers(1, 3),
    channels_per_group=st.integers(1, 2),
    out_per_group=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.integers(0, 2),
    size=st.integers(1, 5),
    data=st.data(),
)
def test_conv_transpose_matches_torch(
    rank, groups, channels_per_group, out_per_group, kernel, stride, dilation, padding, size, data
):
    output_padding = data.draw(st.integers(0, max(stride, dilation) - 1))
    full = (size - 1) * stride + dilation * (kernel - 1) + output_padding + 1
    if full - 2 * padding < 1:
        padding = 0
    channels = groups * channels_per_group
    x = torch.randn(2, channels, *([size] * rank), dtype=torch.float64)
    w = torch.randn(channels, out_per_group, *([kernel] * rank), dtype=torch.float64)
    b = torch.randn(out_per_group * groups, dtype=torch.float64)
    expected = CONV_T[rank](x, w, b, stride, padding, output_padding, groups, dilation)
    actual = reference.conv_transpose(
        x.numpy(), w.numpy(), b.numpy(), stride, padding, output_padding, dilation, groups
    )
    assert_close_to_reference(expected, actual)


@pytest.mark.parametrize(
    ("n", "k", "s", "expected"),
    [(7, 3, 2, (1, 1)), (8, 3, 2, (0, 1)), (5, 4, 1, (1, 2)), (6, 1, 3, (0, 0)), (2, 5, 3, (1, 2))],
)
def test_same_padding_follows_tensorflow(n, k, s, expected):
    # TensorFlow: out = ceil(n/s); total = max((out-1)*s + k - n, 0); the odd extra goes high.
    assert reference.padding_pairs("same", [n], [k], [s], [1]) == [expected]


def test_reference_computes_in_float64():
    x = np.ones((1, 1, 4), np.float32)
    assert reference.conv(x, np.ones((1, 1, 2), np.float32)).dtype == np.float64
