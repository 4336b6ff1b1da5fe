"""Every layer and functional against the NumPy reference, over hypothesis-generated cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import sepconv
from sepconv import functional as SF
from sepconv import reference
from tests.conftest import assert_close_to_reference
from tests.strategies import conv_cases

DEPTHWISE = {1: sepconv.DepthwiseConv1d, 2: sepconv.DepthwiseConv2d, 3: sepconv.DepthwiseConv3d}
POINTWISE = {1: sepconv.PointwiseConv1d, 2: sepconv.PointwiseConv2d, 3: sepconv.PointwiseConv3d}
SEPARABLE = {1: sepconv.SeparableConv1d, 2: sepconv.SeparableConv2d, 3: sepconv.SeparableConv3d}
PADDED = {1: sepconv.PaddedConv1d, 2: sepconv.PaddedConv2d, 3: sepconv.PaddedConv3d}
TRANSPOSE = {
    1: sepconv.SeparableConvTranspose1d,
    2: sepconv.SeparableConvTranspose2d,
    3: sepconv.SeparableConvTranspose3d,
}


def _np(t):
    return None if t is None else t.detach().numpy()


def _input(case):
    return torch.randn(*case.input_shape, dtype=torch.float64)


def _separable(case, out_channels=None, **kwargs):
    """The float64 separable layer of ``case`` (its geometry, modes and bias)."""
    return SEPARABLE[case.rank](
        case.in_channels,
        case.out_channels if out_channels is None else out_channels,
        case.kernel_size,
        case.stride,
        case.padding,
        case.dilation,
        case.depth_multiplier,
        case.bias,
        case.padding_mode,
        dtype=torch.float64,
        **kwargs,
    )


@given(case=conv_cases())
def test_depthwise_layer(case):
    layer = DEPTHWISE[case.rank](
        case.in_channels,
        case.kernel_size,
        case.stride,
        case.padding,
        case.dilation,
        case.depth_multiplier,
        case.bias,
        case.padding_mode,
        dtype=torch.float64,
    )
    x = _input(case)
    expected = reference.depthwise_conv(
        x.numpy(),
        _np(layer.weight),
        _np(layer.bias),
        case.stride,
        case.padding,
        case.dilation,
        case.padding_mode,
    )
    assert_close_to_reference(layer(x), expected)
    assert layer.weight.shape == (case.in_channels * case.depth_multiplier, 1, *case.kernel_size)


@given(case=conv_cases(), pointwise_groups=st.sampled_from([1, 2]))
def test_separable_layer(case, pointwise_groups):
    mid = case.in_channels * case.depth_multiplier
    groups = pointwise_groups if mid % pointwise_groups == 0 else 1
    layer = _separable(case, case.out_channels * groups, pointwise_groups=groups)
    x = _input(case)
    dw, pw = layer.depthwise, layer.pointwise
    expected = reference.separable_conv(
        x.numpy(),
        _np(dw.weight),
        _np(pw.weight),
        _np(dw.bias),
        _np(pw.bias),
        case.stride,
        case.padding,
        case.dilation,
        case.padding_mode,
    )
    assert_close_to_reference(layer(x), expected)


@given(case=conv_cases())
def test_separable_functional(case):
    x = _input(case)
    mid = case.in_channels * case.depth_multiplier
    dw_w = torch.randn(mid, 1, *case.kernel_size, dtype=torch.float64)
    pw_w = torch.randn(case.out_channels, mid, *([1] * case.rank), dtype=torch.float64)
    dw_b = torch.randn(mid, dtype=torch.float64) if case.bias else None
    pw_b = torch.randn(case.out_channels, dtype=torch.float64) if case.bias else None
    fn = getattr(SF, f"separable_conv{case.rank}d")
    actual = fn(
        x, dw_w, pw_w, dw_b, pw_b, case.stride, case.padding, case.dilation, case.padding_mode
    )
    expected = reference.separable_conv(
        x.numpy(),
        dw_w.numpy(),
        pw_w.numpy(),
        _np(dw_b),
        _np(pw_b),
        case.stride,
        case.padding,
        case.dilation,
        case.padding_mode,
    )
    assert_close_to_reference(actual, expected)
    # the flat (O, C*M) pointwise weight gives the same result
    flat = fn(
        x,
        dw_w,
        pw_w.flatten(1),
        dw_b,
        pw_b,
        case.stride,
        case.padding,
        case.dilation,
        case.padding_mode,
    )
    torch.testing.assert_close(flat, actual, rtol=0, atol=0)


@given(case=conv_cases())
def test_depthwise_functional(case):
    x = _input(case)
    w = torch.randn(
        case.in_channels * case.depth_multiplier, 1, *case.kernel_size, dtype=torch.float64
    )
    fn = getattr(SF, f"depthwise_conv{case.rank}d")
    actual = fn(x, w, None, case.stride, case.padding, case.dilation, case.padding_mode)
    expected = reference.depthwise_conv(
        x.numpy(), w.numpy(), None, case.stride, case.padding, case.dilation, case.padding_mode
    )
    assert_close_to_reference(actual, expected)


@given(case=conv_cases())
def test_functional_unbatched_input_is_a_batch_of_one(case):
    x = torch.randn(case.in_channels, *case.spatial, dtype=torch.float64)
    mid = case.in_channels * case.depth_multiplier
    dw_w = torch.randn(mid, 1, *case.kernel_size, dtype=torch.float64)
    pw_w = torch.randn(case.out_channels, mid, dtype=torch.float64)
    geometry = (case.stride, case.padding, case.dilation, case.padding_mode)
    depthwise = getattr(SF, f"depthwise_conv{case.rank}d")
    separable = getattr(SF, f"separable_conv{case.rank}d")
    torch.testing.assert_close(
        depthwise(x, dw_w, None, *geometry), depthwise(x[None], dw_w, None, *geometry)[0]
    )
    torch.testing.assert_close(
        separable(x, dw_w, pw_w, None, None, *geometry),
        separable(x[None], dw_w, pw_w, None, None, *geometry)[0],
    )


@given(
    rank=st.integers(1, 3),
    kernel=st.integers(2, 5),
    dilation=st.integers(1, 3),
    padding=st.integers(0, 2),
    data=st.data(),
)
def test_input_smaller_than_the_kernel_is_a_value_error(rank, kernel, dilation, padding, data):
    span = dilation * (kernel - 1) + 1
    assume(span - 2 * padding > 1)  # else padding alone makes every input big enough
    spatial = [data.draw(st.integers(span, span + 2)) for _ in range(rank)]
    axis = data.draw(st.integers(0, rank - 1))
    spatial[axis] = data.draw(st.integers(1, span - 2 * padding - 1))
    x = torch.randn(1, 2, *spatial)
    layer = SEPARABLE[rank](2, 3, kernel, padding=padding, dilation=dilation)
    padded = spatial[axis] + 2 * padding
    with pytest.raises(
        ValueError, match=rf"spatial dim {axis} is {padded} after padding.*spans {span}"
    ):
        layer(x)
    with pytest.raises(ValueError, match="too small"):
        getattr(SF, f"depthwise_conv{rank}d")(x, layer.depthwise.weight, None, 1, padding, dilation)


@given(case=conv_cases(), groups=st.sampled_from([1, 2]))
def test_pointwise_layer(case, groups):
    channels, out_channels = case.in_channels * groups, case.out_channels * groups
    layer = POINTWISE[case.rank](
        channels, out_channels, bias=case.bias, groups=groups, dtype=torch.float64
    )
    x = torch.randn(case.batch, channels, *case.spatial, dtype=torch.float64)
    expected = reference.conv(x.numpy(), _np(layer.weight), _np(layer.bias), groups=groups)
    assert_close_to_reference(layer(x), expected)


@given(case=conv_cases(), groups=st.sampled_from([1, 2]))
def test_padded_conv_layer(case, groups):
    channels = case.in_channels * groups
    layer = PADDED[case.rank](
        channels,
        case.out_channels * groups,
        case.kernel_size,
        case.stride,
        case.padding,
        case.dilation,
        groups,
        case.bias,
        case.padding_mode,
        dtype=torch.float64,
    )
    x = torch.randn(case.batch, channels, *case.spatial, dtype=torch.float64)
    expected = reference.conv(
        x.numpy(),
        _np(layer.weight),
        _np(layer.bias),
        case.stride,
        case.padding,
        case.dilation,
        groups,
        case.padding_mode,
    )
    assert_close_to_reference(layer(x), expected)


@given(case=conv_cases(), data=st.data())
def test_separable_to_dense_is_exact(case, data):
    layer = _separable(case)
    dense = layer.to_dense()
    assert isinstance(dense, torch.nn.modules.conv._ConvNd)
    x = _input(case)
    torch.testing.assert_close(dense(x), layer(x), rtol=1e-10, atol=1e-10)


@given(
    rank=st.integers(1, 3),
    channels=st.integers(1, 3),
    mult=st.integers(1, 3),
    out=st.integers(1, 4),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    size=st.integers(1, 4),
    bias=st.booleans(),
    data=st.data(),
)
def test_separable_transpose(rank, channels, mult, out, kernel, stride, padding, size, bias, data):
    output_padding = data.draw(st.integers(0, stride - 1))
    if (size - 1) * stride + kernel + output_padding - 2 * padding < 1:
        padding = 0
    layer = TRANSPOSE[rank](
        channels,
        out,
        kernel,
        stride,
        padding,
        output_padding,
        depth_multiplier=mult,
        bias=bias,
        dtype=torch.float64,
    )
    x = torch.randn(2, channels, *([size] * rank), dtype=torch.float64)
    dw, pw = layer.depthwise, layer.pointwise
    mid = reference.conv_transpose(
        x.numpy(), _np(dw.weight), _np(dw.bias), stride, padding, output_padding, groups=channels
    )
    expected = reference.conv(mid, _np(pw.weight), _np(pw.bias))
    assert_close_to_reference(layer(x), expected)
    assert dw.weight.shape == (channels, mult, *([kernel] * rank))


@given(
    channels=st.integers(1, 3),
    out=st.integers(1, 4),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.sampled_from([0, 1, "same", "valid"]),
    depthwise=st.booleans(),
    bias=st.booleans(),
    h=st.integers(4, 8),
    w=st.integers(4, 8),
)
def test_spatially_separable(channels, out, kh, kw, stride, padding, depthwise, bias, h, w):
    out_channels = channels * out if depthwise else out
    layer = sepconv.SpatiallySeparableConv2d(
        channels,
        out_channels,
        (kh, kw),
        stride,
        padding,
        bias=bias,
        depthwise=depthwise,
        dtype=torch.float64,
    )
    x = torch.randn(2, channels, h, w, dtype=torch.float64)
    v, hz = layer.vertical, layer.horizontal
    pv = padding if isinstance(padding, str) else (padding, 0)
    ph = padding if isinstance(padding, str) else (0, padding)
    mid = reference.conv(x.numpy(), _np(v.weight), _np(v.bias), (stride[0], 1), pv, 1, v.groups)
    expected = reference.conv(mid, _np(hz.weight), _np(hz.bias), (1, stride[1]), ph, 1, hz.groups)
    assert_close_to_reference(layer(x), expected)
    assert v.weight.shape[2:] == (kh, 1) and hz.weight.shape[2:] == (1, kw)
