"""Cost formulas against counting the work a convolution really does."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import sepconv
from sepconv import cost


def _flops(module, x) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        module(x)
    return counter.get_total_flops()


@given(
    rank=st.integers(1, 3),
    c=st.integers(1, 4),
    m=st.integers(1, 3),
    o=st.integers(1, 6),
    k=st.integers(1, 3),
    s=st.integers(1, 2),
    size=st.integers(3, 7),
    bias=st.booleans(),
)
def test_separable_costs_match_the_layer(rank, c, m, o, k, s, size, bias):
    cls = {1: sepconv.SeparableConv1d, 2: sepconv.SeparableConv2d, 3: sepconv.SeparableConv3d}[rank]
    layer = cls(c, o, k, stride=s, depth_multiplier=m, bias=bias)
    x = torch.randn(2, c, *([size] * rank))
    out_size = cost.conv_output_size((size,) * rank, (k,) * rank, s)
    assert layer(x).shape[2:] == out_size
    kernel = (k,) * rank
    assert cost.separable_params(c, o, kernel, m, bias) == sum(
        p.numel() for p in layer.parameters()
    )
    assert 2 * cost.separable_macs(c, o, kernel, out_size, m, batch=2) == _flops(layer, x)


@given(
    groups=st.integers(1, 3),
    cpg=st.integers(1, 3),
    opg=st.integers(1, 3),
    k=st.integers(1, 3),
    s=st.integers(1, 2),
    d=st.integers(1, 2),
    p=st.integers(0, 2),
    size=st.integers(5, 9),
)
def test_grouped_conv_costs_match_flop_counter(groups, cpg, opg, k, s, d, p, size):
    conv = torch.nn.Conv2d(groups * cpg, groups * opg, k, s, p, d, groups)
    x = torch.randn(1, groups * cpg, size, size)
    out = cost.conv_output_size(size, k, s, p, d)
    assert conv(x).shape[2:] == out
    assert 2 * cost.conv_macs(groups * cpg, groups * opg, k, out, groups) == _flops(conv, x)
    assert cost.conv_params(groups * cpg, groups * opg, k, groups) == sum(
        q.numel() for q in conv.parameters()
    )


@given(
    c=st.integers(1, 4),
    o=st.integers(1, 4),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    size=st.integers(1, 5),
)
def test_transposed_conv_costs_match_flop_counter(c, o, k, s, size):
    conv = torch.nn.ConvTranspose2d(c, o, k, s)
    x = torch.randn(2, c, size, size)
    assert 2 * cost.conv_transpose_macs(c, o, k, (size, size), batch=2) == _flops(conv, x)


@given(n=st.integers(1, 30), k=st.integers(1, 5), s=st.integers(1, 4))
def test_same_output_size_is_ceil(n, k, s):
    assert cost.conv_output_size((n,), (k,), (s,), "same") == (math.ceil(n / s),)
    layer = sepconv.DepthwiseConv1d(1, k, s, padding="same")
    assert layer(torch.randn(1, 1, n)).shape[-1] == math.ceil(n / s)


def test_bad_cost_arguments_name_the_argument():
    with pytest.raises(ValueError, match="groups"):
        cost.conv_params(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size"):
        cost.conv_output_size(3, 5)
    with pytest.raises(TypeError, match="in_channels"):
        cost.conv_params(3.0, 4, 3)
