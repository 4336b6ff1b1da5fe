"""to_dense (seed 001's MobileNetV2 blocks) and fold_batchnorm: exact, never mutating the original."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sepconv
from sepconv.layers.separable import _SeparableConvNd
from tests.conversion.helpers import rel_error, same_state, state_snapshot

# --- seed 001, copied as written ------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_planes, out_planes, kernel_size, stride=1, groups=1):
        padding = (kernel_size - 1) // 2
        super(ConvBNReLU, self).__init__(  # noqa: UP008
            nn.Conv2d(
                in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, kernel, stride, expand_ratio, res_connect):
        super(InvertedResidual, self).__init__()  # noqa: UP008
        self.stride = stride
        assert stride in [1, 2]
        hidden_dim = int(round(inp * expand_ratio))  # noqa: RUF046
        self.use_res_connect = res_connect
        layers = []
        if expand_ratio != 1:
            # pw
            layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1))
        layers.extend(
            [
                # depth-wise
                ConvBNReLU(
                    hidden_dim, hidden_dim, kernel_size=kernel, stride=stride, groups=hidden_dim
                ),
                # pw-linear
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        else:
            return self.conv(x)


# ---------------------------------------------------------------------------------------------


def mobilenet_blocks() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        ConvBNReLU(3, 16, 3, stride=2),
        InvertedResidual(16, 16, 3, 1, 1, True),
        InvertedResidual(16, 24, 3, 2, 6, False),
        InvertedResidual(24, 24, 5, 1, 6, True),
        ConvBNReLU(24, 32, 3, groups=4),
    ).double()
    for module in model.modules():  # non-trivial BN statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def grouped_convs(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and m.groups > 1
    ]


def test_seed_mobilenetv2_to_dense():
    model = mobilenet_blocks()
    assert grouped_convs(model)
    before = state_snapshot(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = model(x)
    dense = sepconv.to_dense(model)
    assert not grouped_convs(dense)
    assert rel_error(dense(x), expected) < 1e-12
    assert same_state(model, before) and grouped_convs(model)  # original untouched
    # all weights of the former depthwise convs now train, off-block ones included
    former = dense[1].conv[0][0]
    assert former.weight.shape == (16, 16, 3, 3) and former.weight.requires_grad
    dense(x).sum().backward()
    assert former.weight.grad[0, 1].abs().sum() > 0


def test_seed_mobilenetv2_fold_then_dense():
    model = mobilenet_blocks()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = model(x)
    folded = sepconv.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert rel_error(folded(x), expected) < 1e-12
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    both = sepconv.to_dense(folded, inplace=True)
    assert both is folded and rel_error(both(x), expected) < 1e-12


def test_separable_layers_to_dense():
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            sepconv.SeparableConv2d(4, 6, 3, padding=1, depth_multiplier=2),
            sepconv.SeparableConv2d(
                6,
                8,
                3,
                stride=2,
                padding="same",
                pointwise_groups=2,
                norm_layer="batchnorm",
                act_layer="relu",
            ),
            sepconv.SeparableConv2d(
                8, 8, 3, mid_norm_layer="batchnorm", mid_act_layer="relu", act_layer="relu"
            ),
            sepconv.DepthwiseConv2d(8, 3, padding=1),
        )
        .double()
        .eval()
    )
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    dense = sepconv.to_dense(model)
    assert not isinstance(dense[0], _SeparableConvNd) and isinstance(dense[0], nn.Conv2d)
    assert isinstance(dense[1], nn.Sequential) and dense[1][0].groups == 1
    assert isinstance(dense[2], nn.Sequential) and list(dense[2]._modules) == [
        "depthwise",
        "mid_norm",
        "mid_act",
        "pointwise",
        "act",
    ]
    assert dense[2].depthwise.groups == 1 and not dense[2].training
    assert isinstance(dense[3], nn.Conv2d) and dense[3].groups == 1
    assert rel_error(dense(x), model(x)) < 1e-12
    assert not any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 for m in dense.modules())


def test_grouped_1d_3d_and_shared():
    conv = nn.Conv1d(4, 4, 3, groups=2, padding=1, padding_mode="circular").double()
    model = nn.Sequential(conv, nn.Tanh(), conv)
    x = torch.randn(2, 4, 9, dtype=torch.float64)
    dense = sepconv.to_dense(model)
    assert dense[0] is dense[2] and dense[0].groups == 1 and dense[0].padding_mode == "circular"
    assert rel_error(dense(x), model(x)) < 1e-12
    conv3 = nn.Conv3d(4, 4, 2, groups=4).double()
    x3 = torch.randn(1, 4, 4, 4, 4, dtype=torch.float64)
    assert rel_error(sepconv.to_dense(conv3)(x3), conv3(x3)) < 1e-12


def test_fold_batchnorm_in_separable_layers():
    torch.manual_seed(0)
    layer = sepconv.SeparableConv2d(
        4, 6, 3, padding=1, norm_layer="batchnorm", mid_norm_layer="batchnorm"
    ).double()
    model = nn.Sequential(
        layer,
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, bias=False),
        nn.BatchNorm2d(6, affine=False),
        sepconv.SeparableConv2d(6, 5, 3),
        nn.BatchNorm2d(5),
    ).double()
    with torch.no_grad():  # train BN statistics a little
        model.train()
        for _ in range(3):
            model(torch.randn(4, 4, 12, 12, dtype=torch.float64) * 2 + 1)
    model.eval()
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    folded = sepconv.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not folded[0].has_mid_layers
    assert rel_error(folded(x), model(x)) < 1e-12
    dense = sepconv.to_dense(folded)
    assert rel_error(dense(x), model(x)) < 1e-12


def test_fold_batchnorm_after_a_separable_layer_with_its_own_norm():
    torch.manual_seed(0)
    model = nn.Sequential(
        sepconv.SeparableConv2d(3, 4, 3, norm_layer="batchnorm"),
        nn.BatchNorm2d(4),
    ).double()
    with torch.no_grad():
        model.train()
        model(torch.randn(4, 3, 8, 8, dtype=torch.float64) * 3 - 1)
    model.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    folded = sepconv.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert rel_error(folded(x), model(x)) < 1e-12


def test_fold_batchnorm_leaves_what_it_cannot_fold():
    shared = nn.Conv2d(3, 3, 3, padding=1)
    model = (
        nn.Sequential(
            nn.Sequential(
                shared, nn.BatchNorm2d(3)
            ),  # shared conv: folding would change its other use
            shared,
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4, track_running_stats=False),  # batch statistics even in eval
            nn.Conv2d(4, 4, 3),
            nn.ReLU(),
            nn.BatchNorm2d(4),  # not directly after the conv
        )
        .double()
        .eval()
    )
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    folded = sepconv.fold_batchnorm(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 3
    assert rel_error(folded(x), model(x)) < 1e-12


def test_fold_batchnorm_warns_in_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.warns(UserWarning, match="eval mode"):
        sepconv.fold_batchnorm(model)


def test_dense_and_fold_reject_non_modules():
    with pytest.raises(TypeError):
        sepconv.to_dense("x")
    with pytest.raises(TypeError):
        sepconv.fold_batchnorm(3)
