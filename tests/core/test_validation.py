"""Bad input: a clear ValueError/TypeError that names the argument and echoes the value."""

from __future__ import annotations

import pytest
import torch

import sepconv
from sepconv import functional as SF


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(in_channels=0), ValueError, r"in_channels.*0"),
        (dict(in_channels=-2), ValueError, r"in_channels.*-2"),
        (dict(in_channels=2.5), TypeError, r"in_channels.*2\.5"),
        (dict(out_channels=0), ValueError, r"out_channels.*0"),
        (dict(kernel_size=0), ValueError, r"kernel_size.*0"),
        (dict(kernel_size=(3, 3, 3)), ValueError, r"kernel_size.*\(3, 3, 3\)"),
        (dict(depth_multiplier=0), ValueError, r"depth_multiplier.*0"),
        (dict(stride=0), ValueError, r"stride.*0"),
        (dict(dilation=-1), ValueError, r"dilation.*-1"),
        (dict(padding=-1), ValueError, r"padding.*-1"),
        (dict(padding="causal"), ValueError, r"causal.*2d"),
        (dict(padding="full"), ValueError, r"padding.*'full'"),
        (dict(padding_mode="mirror"), ValueError, r"padding_mode.*'mirror'"),
        (dict(bias="yes"), TypeError, r"bias.*'yes'"),
        (dict(pointwise_groups=3), ValueError, r"pointwise_groups|divisible by 3"),
        (dict(norm_layer="fancynorm"), ValueError, r"fancynorm"),
        (dict(act_layer="zap"), ValueError, r"zap"),
    ],
)
def test_separable_constructor_rejects(kwargs, error, pattern):
    args = dict(in_channels=4, out_channels=8, kernel_size=3) | kwargs
    with pytest.raises(error, match=pattern):
        sepconv.SeparableConv2d(**args)


def test_grouped_padded_conv_needs_divisible_channels():
    with pytest.raises(ValueError, match="in_channels=5 must be divisible by groups=2"):
        sepconv.PaddedConv2d(5, 4, 3, groups=2)


def test_forward_rejects_wrong_rank_and_channels():
    layer = sepconv.SeparableConv2d(4, 8, 3)
    with pytest.raises(ValueError, match=r"got shape \(2, 4, 5, 5, 5\)"):
        layer(torch.randn(2, 4, 5, 5, 5))
    with pytest.raises(ValueError, match=r"4 channels.*\(2, 3, 5, 5\)"):
        layer(torch.randn(2, 3, 5, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[1.0]])


def test_functional_rejects_bad_weights():
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match=r"depthwise_weight.*\(4\*M, 1.*got \(6, 1, 3, 3\)"):
        SF.separable_conv2d(x, torch.randn(6, 1, 3, 3), torch.randn(2, 6, 1, 1))
    with pytest.raises(ValueError, match=r"pointwise_weight.*got \(2, 5, 1, 1\)"):
        SF.separable_conv2d(x, torch.randn(4, 1, 3, 3), torch.randn(2, 5, 1, 1))
    with pytest.raises(ValueError, match=r"bias.*\(8,\).*\(3,\)"):
        SF.depthwise_conv2d(x, torch.randn(8, 1, 3, 3), torch.randn(3))
    with pytest.raises(ValueError, match="input of a 2d convolution"):
        SF.depthwise_conv2d(torch.randn(4, 6), torch.randn(4, 1, 3, 3))
    with pytest.raises(ValueError, match="stride.*0"):
        SF.depthwise_conv2d(x, torch.randn(4, 1, 3, 3), stride=0)


def test_reflect_padding_too_large_for_input_is_an_error_not_garbage():
    layer = sepconv.DepthwiseConv1d(2, 5, padding=4, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"padding_mode='reflect'.*\(4, 4\).*size 3"):
        layer(torch.randn(1, 2, 3))
    layer = sepconv.DepthwiseConv2d(2, (1, 7), padding=(0, 6), padding_mode="circular")
    with pytest.raises(ValueError, match=r"circular.*\(6, 6\) on spatial dim 1 of size 5"):
        layer(torch.randn(1, 2, 3, 5))


def test_replicate_padding_has_no_size_bound_like_torch():
    layer = sepconv.DepthwiseConv2d(2, 1, padding=3, padding_mode="replicate")
    x = torch.randn(1, 2, 1, 2)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (3, 3, 3, 3), mode="replicate"),
        layer.weight,
        layer.bias,
        groups=2,
    )
    torch.testing.assert_close(layer(x), expected)


def test_transposed_rejects_string_padding_and_big_output_padding():
    with pytest.raises(ValueError, match="padding.*'same'"):
        sepconv.SeparableConvTranspose2d(4, 8, 3, padding="same")
    with pytest.raises(ValueError, match="output_padding"):
        sepconv.SeparableConvTranspose2d(4, 8, 3, stride=2, output_padding=2)


def test_to_dense_with_mid_layers_says_why():
    layer = sepconv.SeparableConv2d(4, 8, 3, mid_norm_layer="batchnorm", mid_act_layer="relu")
    with pytest.raises(ValueError, match="nothing between the stages"):
        layer.to_dense()
