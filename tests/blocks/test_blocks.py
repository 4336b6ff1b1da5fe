"""Blocks: output shapes, the residual rule, norm/act specs, device/dtype, SE."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from sepconv.blocks import (
    ConvNormAct,
    DepthwiseSeparableBlock,
    InvertedResidual,
    SqueezeExcite,
    make_divisible,
)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_conv_norm_act_shape_and_layout(stride, kernel):
    block = ConvNormAct(4, 6, kernel, stride)
    out = block(torch.randn(2, 4, 9, 9))
    assert out.shape == (2, 6, -(-9 // stride), -(-9 // stride))
    assert isinstance(block[0], nn.Conv2d) and block.conv is block[0]
    assert isinstance(block.norm, nn.BatchNorm2d) and isinstance(block.act, nn.ReLU)
    assert block.conv.bias is None  # a norm follows
    assert (out >= 0).all()


def test_conv_norm_act_without_norm_or_act_has_bias_and_no_extra_layers():
    block = ConvNormAct(3, 5, norm_layer=None, act_layer=None)
    assert len(block) == 1 and block.conv.bias is not None
    assert isinstance(block.norm, nn.Identity) and isinstance(block.act, nn.Identity)


def test_conv_norm_act_same_padding_string():
    block = ConvNormAct(3, 5, 3, stride=2, padding="same")
    assert block(torch.randn(1, 3, 7, 8)).shape == (1, 5, 4, 4)


@pytest.mark.parametrize(
    "norm, act, norm_type, act_type",
    [
        ("batchnorm", "relu6", nn.BatchNorm2d, nn.ReLU6),
        (nn.BatchNorm2d, nn.SiLU, nn.BatchNorm2d, nn.SiLU),
        (functools.partial(nn.GroupNorm, 2), "hardswish", nn.GroupNorm, nn.Hardswish),
        ("groupnorm", torch.tanh, nn.GroupNorm, nn.Module),
    ],
)
def test_norm_and_act_by_class_string_or_callable(norm, act, norm_type, act_type):
    for block in (
        DepthwiseSeparableBlock(8, 16, norm_layer=norm, act_layer=act),
        InvertedResidual(8, 8, expand_ratio=2, norm_layer=norm, act_layer=act),
    ):
        assert block(torch.randn(2, 8, 6, 6)).shape == (2, block.out_channels, 6, 6)
        norms = [m for m in block.modules() if isinstance(m, norm_type)]
        assert len(norms) >= 2
        assert any(isinstance(m, act_type) for m in block.modules() if m is not block)


@pytest.mark.parametrize(
    "cin, cout, stride, residual",
    [(16, 16, 1, True), (16, 16, 2, False), (16, 24, 1, False), (16, 24, 2, False)],
)
def test_inverted_residual_shapes_and_residual_rule(cin, cout, stride, residual):
    block = InvertedResidual(cin, cout, stride, expand_ratio=6)
    assert block.use_res_connect is residual and block.has_residual is residual
    assert block.hidden_channels == 96
    x = torch.randn(2, cin, 8, 8)
    out = block(x)
    assert out.shape == (2, cout, 8 // stride, 8 // stride)
    block.eval()
    if residual:
        torch.testing.assert_close(block(x), x + block.conv(x))
    else:
        torch.testing.assert_close(block(x), block.conv(x))


def test_inverted_residual_linear_bottleneck_and_torchvision_layout():
    block = InvertedResidual(16, 24, 2, expand_ratio=6)
    expand, dw, project, norm = block.conv
    assert isinstance(expand, ConvNormAct) and expand.conv.kernel_size == (1, 1)
    assert dw.conv.groups == 96 and dw.conv.stride == (2, 2)
    assert isinstance(project, nn.Conv2d) and project.kernel_size == (1, 1) and project.bias is None
    assert isinstance(norm, nn.BatchNorm2d)  # no activation after the projection
    no_expand = InvertedResidual(32, 16, 1, expand_ratio=1)
    assert len(no_expand.conv) == 3 and no_expand.conv[0].conv.groups == 32
    assert not no_expand.use_res_connect
    assert not InvertedResidual(16, 16, 1, residual=False).use_res_connect


@pytest.mark.parametrize(
    "cin, cout, stride, residual, used",
    [
        (8, 8, 1, False, False),
        (8, 8, 1, True, True),
        (8, 8, 2, True, False),
        (8, 12, 1, True, False),
    ],
)
def test_depthwise_separable_block_shapes_and_residual_rule(cin, cout, stride, residual, used):
    block = DepthwiseSeparableBlock(cin, cout, stride=stride, residual=residual)
    assert block.has_residual is used
    x = torch.randn(2, cin, 7, 7)
    assert block(x).shape == (2, cout, -(-7 // stride), -(-7 // stride))
    block.eval()
    stages = block.conv_pw(block.conv_dw(x))
    torch.testing.assert_close(block(x), x + stages if used else stages)
    assert block.conv_dw.conv.groups == cin and block.conv_pw.conv.kernel_size == (1, 1)
    assert isinstance(block.conv_dw.act, nn.ReLU) and isinstance(block.conv_pw.act, nn.ReLU)


def test_depthwise_separable_block_options():
    block = DepthwiseSeparableBlock(
        4, 8, kernel_size=5, depth_multiplier=2, pw_act=False, se_ratio=0.25
    )
    assert block.conv_dw.conv.out_channels == 8 and block.conv_dw.conv.kernel_size == (5, 5)
    assert isinstance(block.conv_pw.act, nn.Identity) and isinstance(block.se, SqueezeExcite)
    assert block(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)


def test_squeeze_excite():
    se = SqueezeExcite(32)
    assert se.conv_reduce.out_channels == 8 and se.conv_expand.out_channels == 32
    x = torch.randn(2, 32, 5, 5)
    out = se(x)
    assert out.shape == x.shape
    gate = torch.sigmoid(se.conv_expand(se.act(se.conv_reduce(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(out, x * gate)
    assert SqueezeExcite(16, rd_channels=3).conv_reduce.out_channels == 3
    assert isinstance(SqueezeExcite(16, gate_layer="hardsigmoid").gate, nn.Hardsigmoid)
    with pytest.raises(ValueError):
        SqueezeExcite(16, rd_ratio=0)
    block = InvertedResidual(8, 8, expand_ratio=4, se_ratio=0.25)
    assert isinstance(block.conv[2], SqueezeExcite) and block.conv[2].conv_reduce.in_channels == 32
    assert block(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)


def test_device_and_dtype_reach_every_submodule():
    for block in (
        ConvNormAct(4, 8, dtype=torch.float64, device="cpu"),
        DepthwiseSeparableBlock(4, 8, se_ratio=0.5, dtype=torch.float64),
        InvertedResidual(4, 8, se_ratio=0.25, dtype=torch.float64),
        SqueezeExcite(8, dtype=torch.float64),
    ):
        tensors = list(block.parameters()) + [b for b in block.buffers() if b.is_floating_point()]
        assert tensors and all(t.dtype == torch.float64 for t in tensors)
    meta = InvertedResidual(4, 8, device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError):
        InvertedResidual(4, 8, expand_ratio=0)
    with pytest.raises((ValueError, TypeError)):
        DepthwiseSeparableBlock(4, 8, stride=0)
    with pytest.raises(ValueError):
        ConvNormAct(4, 6, groups=4)
    with pytest.raises(ValueError):
        ConvNormAct(4, 8, norm_layer="nonsense")


def test_make_divisible_matches_torchvision():
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(3) == 8
    assert make_divisible(100, 8) == 104
