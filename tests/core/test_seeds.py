"""The worked examples of the seed documents (../shared/seeds), as tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import sepconv
from sepconv import cost


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_seed000_filters_of_1s_2s_3s_give_centre_values_9_36_81():
    layer = sepconv.DepthwiseConv2d(3, 3, padding=1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.full((1, 3, 3), float(v)) for v in (1, 2, 3)]))
    x = torch.cat([torch.full((1, 3, 3), float(v)) for v in (1, 2, 3)]).unsqueeze(0)
    out = layer(x)
    assert out[0, :, 1, 1].tolist() == [9.0, 36.0, 81.0]
    assert out[0, 0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]
    # the same numbers with nn.Conv2d(groups=3), as in the forum thread
    assert torch.equal(F.conv2d(x, layer.weight, padding=1, groups=3), out)


def test_seed000_nine_filters_split_and_concatenate():
    layer = sepconv.DepthwiseConv2d(3, 3, padding=1, depth_multiplier=3, bias=False)
    assert layer.weight.shape == (9, 1, 3, 3)
    x = torch.randn(1, 3, 4, 4)
    channels = x.split(1, dim=1)
    # filters c*3 ... c*3+2 read input channel c
    parts = [F.conv2d(channels[j // 3], layer.weight[j : j + 1], padding=1) for j in range(9)]
    torch.testing.assert_close(torch.cat(parts, dim=1), layer(x))


def test_seed001_weight_of_shape_4nin_reads_input_channel_c_for_filters_4c_to_4c_plus_3():
    nin = 5
    layer = sepconv.DepthwiseConv2d(nin, 3, padding=1, depth_multiplier=4, bias=False)
    assert layer.weight.shape == (4 * nin, 1, 3, 3)
    x = torch.zeros(1, nin, 6, 6)
    x[0, 2] = torch.randn(6, 6)  # only input channel 2 is non-zero
    out = layer(x)
    nonzero = [j for j in range(4 * nin) if out[0, j].abs().sum() > 0]
    assert nonzero == [8, 9, 10, 11]


def test_seed003_parameter_counts_2912_and_452():
    x = torch.rand(5, 10, 50, 50)
    dense = nn.Conv2d(10, 32, 3)
    separable = sepconv.SeparableConv2d(10, 32, 3)
    assert _count(dense) == 2912
    assert _count(separable) == 452
    assert dense(x).shape == separable(x).shape == (5, 32, 48, 48)
    comparison = cost.compare(10, 32, 3, 50)
    assert (comparison.standard.params, comparison.separable.params) == (2912, 452)


def test_seed003_formulas():
    c, k, o, w, h = 10, 3, 64, 50, 50
    assert cost.conv_params(c, o, k, bias=False) == c * k * k * o
    assert cost.separable_params(c, o, k, bias=False) == c * (k * k + o)
    assert cost.conv_macs(c, o, k, (h, w)) == w * h * c * k * k * o
    assert cost.separable_macs(c, o, k, (h, w)) == w * h * c * (k * k + o)


def test_seed004_86400_and_10275_multiplications():
    comparison = cost.compare(3, 128, 3, 7)
    assert comparison.output_size == (5, 5)
    assert comparison.standard.macs == 86_400
    assert comparison.depthwise.macs == 675
    assert comparison.pointwise.macs == 9_600
    assert comparison.separable.macs == 10_275
    assert round(comparison.macs_ratio, 2) == 0.12
