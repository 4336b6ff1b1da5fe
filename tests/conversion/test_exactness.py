"""rank=None converts exactly: outputs equal for any conv geometry (hypothesis)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv.layers.separable import _SeparableConvNd
from tests.conversion.helpers import rel_error

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
PADDED = {1: sepconv.PaddedConv1d, 2: sepconv.PaddedConv2d, 3: sepconv.PaddedConv3d}


@st.composite
def dense_convs(draw):
    rank = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    in_channels = groups * draw(st.integers(1, 3))
    if groups > 1 and in_channels == groups:  # keep it grouped, not depthwise
        in_channels *= 2
    out_channels = groups * draw(st.integers(1, 4 if rank < 3 else 2))
    max_kernel = {1: 5, 2: 3, 3: 2}[rank]
    kernel = tuple(draw(st.lists(st.integers(1, max_kernel), min_size=rank, max_size=rank)))
    if all(k == 1 for k in kernel):
        kernel = (2, *kernel[1:])
    stride = tuple(draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank)))
    dilation = tuple(draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank)))
    options = [
        st.integers(0, 2),
        st.lists(st.integers(0, 2), min_size=rank, max_size=rank).map(tuple),
        st.just("valid"),
    ]
    if all(s == 1 for s in stride):
        options.append(st.just("same"))
    padding = draw(st.one_of(*options))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    bias = draw(st.booleans())
    spatial = tuple(d * (k - 1) + draw(st.integers(3, 6)) for k, d in zip(kernel, dilation))
    conv = CONVS[rank](
        in_channels, out_channels, kernel, stride, padding, dilation, groups, bias, mode
    )
    batch = draw(st.integers(1, 2))
    return conv, (batch, in_channels, *spatial)


@given(dense_convs(), st.integers(0, 2**31 - 1))
def test_exact_conversion_float64(case, seed):
    conv, shape = case
    torch.manual_seed(seed)
    conv = conv.double()
    x = torch.randn(shape, dtype=torch.float64)
    separable = sepconv.to_separable(conv)
    assert isinstance(separable, _SeparableConvNd)
    assert separable.depth_multiplier == min(
        conv.out_channels // conv.groups, math.prod(conv.kernel_size)
    )
    assert separable.pointwise.groups == conv.groups
    assert separable.depthwise.bias is None
    assert separable.padding_mode == conv.padding_mode
    expected = conv(x)
    assert rel_error(separable(x), expected) < 1e-10


@settings(max_examples=15)
@given(dense_convs(), st.integers(0, 2**31 - 1))
def test_exact_conversion_float32(case, seed):
    conv, shape = case
    torch.manual_seed(seed)
    x = torch.randn(shape)
    separable = sepconv.to_separable(conv)
    assert separable.depthwise.weight.dtype == torch.float32
    assert rel_error(separable(x).double(), conv(x).double()) < 1e-5


@settings(max_examples=10)
@given(
    st.sampled_from(
        [(1, "causal", 1), (2, "same", 2), (1, "same", 3), (3, "same", 2), (2, (1, 0), 1)]
    ),
    st.booleans(),
)
def test_exact_conversion_of_sepconv_padded_convs(spec, bias):
    """sepconv's PaddedConvNd (TensorFlow 'same' for any stride, 'causal') keeps its padding spec."""
    rank, padding, stride = spec
    conv = PADDED[rank](3, 5, 3, stride=stride, padding=padding, bias=bias).double()
    x = torch.randn(2, 3, *(7,) * rank, dtype=torch.float64)
    separable = sepconv.to_separable(conv)
    assert rel_error(separable(x), conv(x)) < 1e-10


def test_exact_conversion_of_a_network_with_channel_ordering():
    """A stack (channel ordering c*R + r matters in both stages) stays exact end to end."""
    net = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(6, 6, (3, 2), stride=2, groups=2, padding=(1, 0)),
        nn.Tanh(),
        nn.Conv2d(6, 3, 5, padding="same", padding_mode="circular"),
    ).double()
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    converted = sepconv.to_separable(net)
    assert all(isinstance(converted[i], _SeparableConvNd) for i in (0, 2, 4))
    assert rel_error(converted(x), net(x)) < 1e-10
    back = sepconv.to_dense(converted)
    assert rel_error(back(x), net(x)) < 1e-10
