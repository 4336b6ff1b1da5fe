"""MACs, parameters and bytes per layer, against FlopCounterMode and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import sepconv
from sepconv.analysis import profile
from sepconv.layers.separable import _SeparableConvNd as SeparableConv


def flop_counter_flops(module: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def profiled_macs(module: nn.Module, x: torch.Tensor) -> int:
    return profile(module, x, measure=False, peaks=False).total_macs


@st.composite
def conv_cases(draw):
    """A random nn.ConvNd / nn.ConvTransposeNd of any kind (grouped, depthwise, dilated, strided...)."""
    rank = draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    groups = draw(st.integers(1, 4))
    c = groups * draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    o = c * draw(st.integers(1, 2)) if depthwise else groups * draw(st.integers(1, 3))
    if depthwise:
        groups = c
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    # A transposed conv's output (n-1)*s - 2p + d*(k-1) + 1 must stay positive for n = 1.
    padding = tuple(
        draw(st.integers(0, min(1, d * (k - 1) // 2) if transposed else 1))
        for k, d in zip(kernel, dilation)
    )
    size = tuple(
        draw(st.integers(d * (k - 1) + 1, d * (k - 1) + 5)) for k, d in zip(kernel, dilation)
    )
    batch = draw(st.integers(1, 2))
    conv_cls = (
        (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        if transposed
        else (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    )
    module = conv_cls[rank - 1](
        c,
        o,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
    )
    return module, torch.randn(batch, c, *size), transposed


@given(conv_cases())
def test_conv_macs_match_flop_counter_and_formula(case):
    module, x, transposed = case
    macs = profiled_macs(module, x)
    assert 2 * macs == flop_counter_flops(module, x)
    out = module(x)
    per_position = (
        module.in_channels * module.out_channels // module.groups * math.prod(module.kernel_size)
    )
    positions = math.prod((x if transposed else out).shape[2:])
    assert macs == x.shape[0] * positions * per_position


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_unbatched_input(rank, transposed):
    cls = (
        (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        if transposed
        else (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    )
    module = cls[rank - 1](4, 6, 3, groups=2)
    x = torch.randn(4, *(6,) * rank)
    assert 2 * profiled_macs(module, x) == flop_counter_flops(module, x)


SEPCONV_LAYERS = [
    (lambda: sepconv.SeparableConv1d(4, 8, 5, padding="causal", dilation=2), (2, 4, 17)),
    (lambda: sepconv.SeparableConv2d(4, 8, 3, stride=2, padding="same"), (2, 4, 11, 9)),
    (
        lambda: sepconv.SeparableConv2d(4, 8, 3, depth_multiplier=2, pointwise_groups=2),
        (1, 4, 9, 9),
    ),
    (lambda: sepconv.SeparableConv3d(3, 5, (1, 3, 3), padding=1), (1, 3, 4, 6, 6)),
    (
        lambda: sepconv.SeparableConv2d(4, 8, 3, mid_norm_layer="bn", mid_act_layer="relu"),
        (2, 4, 8, 8),
    ),
    (
        lambda: sepconv.DepthwiseConv2d(4, 3, depth_multiplier=3, stride=2, padding="same"),
        (2, 4, 10, 10),
    ),
    (lambda: sepconv.DepthwiseConv1d(4, 3, padding_mode="reflect", padding=1), (2, 4, 10)),
    (lambda: sepconv.PointwiseConv2d(8, 6, groups=2), (2, 8, 5, 5)),
    (lambda: sepconv.PointwiseConv3d(4, 6), (1, 4, 3, 3, 3)),
    (lambda: sepconv.SpatiallySeparableConv2d(4, 8, 3, padding=1), (2, 4, 9, 9)),
    (
        lambda: sepconv.SpatiallySeparableConv2d(4, 8, (3, 5), stride=2, depthwise=True),
        (2, 4, 12, 12),
    ),
    (lambda: sepconv.SeparableConvTranspose2d(4, 6, 3, stride=2, output_padding=1), (2, 4, 5, 5)),
    (lambda: sepconv.SeparableConvTranspose1d(4, 6, 4, stride=2, depth_multiplier=2), (2, 4, 7)),
    (lambda: sepconv.DepthwiseConvTranspose3d(2, 3, stride=2), (1, 2, 3, 3, 3)),
]


def _fused_norm_macs(module, x, report) -> int:
    """The work of a norm between a separable layer's stages that its fused row counts (one
    MAC a depthwise output element; FlopCounterMode counts convolutions only)."""
    fused = "mid_norm" not in {r.name for r in report.rows}
    if not (isinstance(module, SeparableConv) and fused):
        return 0
    if not isinstance(module.mid_norm, nn.modules.batchnorm._BatchNorm):
        return 0
    with torch.no_grad():
        return module.depthwise(x).numel()


@pytest.mark.parametrize(("factory", "shape"), SEPCONV_LAYERS)
def test_sepconv_layers_match_flop_counter(factory, shape):
    module = factory().eval()
    x = torch.randn(shape)
    report = profile(module, x, measure=False, peaks=False)
    conv_macs = sum(r.macs for r in report.rows if r.kind not in ("norm", "activation"))
    assert 2 * (conv_macs - _fused_norm_macs(module, x, report)) == flop_counter_flops(module, x)
    assert report.total_params == sum(p.numel() for p in module.parameters())


@given(
    c=st.integers(1, 6),
    o=st.integers(1, 6),
    k=st.integers(1, 4),
    m=st.integers(1, 2),
    size=st.integers(4, 9),
    stride=st.integers(1, 2),
    rank=st.integers(1, 3),
)
def test_separable_macs_match_flop_counter_and_cost(c, o, k, m, size, stride, rank):
    cls = (sepconv.SeparableConv1d, sepconv.SeparableConv2d, sepconv.SeparableConv3d)[rank - 1]
    module = cls(c, o, k, stride=stride, depth_multiplier=m)
    x = torch.randn(1, c, *(size,) * rank)
    macs = profiled_macs(module, x)
    assert 2 * macs == flop_counter_flops(module, x)
    out = sepconv.cost.conv_output_size((size,) * rank, (k,) * rank, stride)
    assert macs == sepconv.cost.separable_macs(c, o, (k,) * rank, out, depth_multiplier=m)


def test_linear_matches_flop_counter():
    module = nn.Linear(12, 7)
    x = torch.randn(3, 5, 12)
    assert 2 * profiled_macs(module, x) == flop_counter_flops(module, x) == 2 * 3 * 5 * 12 * 7


def test_seed_004_macs_by_hand():
    x = torch.randn(1, 3, 7, 7)
    assert profiled_macs(nn.Conv2d(3, 128, 3), x) == 5 * 5 * 3 * 3 * 3 * 128 == 86_400
    assert profiled_macs(sepconv.SeparableConv2d(3, 128, 3), x) == 675 + 9_600 == 10_275


def test_seed_003_params():
    x = torch.randn(1, 10, 50, 50)
    assert profile(nn.Conv2d(10, 32, 3), x, measure=False, peaks=False).total_params == 2912
    assert (
        profile(sepconv.SeparableConv2d(10, 32, 3), x, measure=False, peaks=False).total_params
        == 452
    )


def test_kinds():
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 8, 1),
        sepconv.SeparableConv2d(8, 8, 3, padding=1),
        nn.ConvTranspose2d(8, 8, 2, stride=2),
        nn.ConvTranspose2d(8, 8, 3, groups=8),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Identity(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
        nn.Softmax(-1),
    ).eval()
    kinds = [
        r.kind for r in profile(model, torch.randn(1, 4, 8, 8), measure=False, peaks=False).rows
    ]
    assert kinds == [
        "conv",
        "grouped",
        "depthwise",
        "pointwise",
        "separable",
        "conv-transpose",
        "depthwise-transpose",
        "norm",
        "activation",
        "pooling",
        "pooling",
        "linear",
        "activation",
    ]


def test_bytes_is_inputs_outputs_and_weights():
    module = nn.Conv2d(3, 8, 3, bias=True)
    x = torch.randn(2, 3, 10, 10)
    row = profile(module, x, measure=False, peaks=False).rows[0]
    expected = 4 * (x.numel() + 2 * 8 * 8 * 8 + 8 * 3 * 9 + 8)
    assert row.bytes == expected
    assert row.intensity == pytest.approx(2 * row.macs / expected)
    double = profile(module.double(), x.double(), measure=False, peaks=False).rows[0]
    assert double.bytes == 2 * expected


def test_norm_and_pooling_counts():
    x = torch.randn(2, 4, 6, 6)
    assert profiled_macs(nn.BatchNorm2d(4).eval(), x) == x.numel()
    assert profiled_macs(nn.AvgPool2d(2), x) == 2 * 4 * 3 * 3 * 4
    assert profiled_macs(nn.AdaptiveAvgPool2d(1), x) == x.numel()
    assert profiled_macs(nn.ReLU(), x) == 0
