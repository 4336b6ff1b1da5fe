"""MobileNetV1/V2: published parameter counts, shapes, layout, init, small variants, weights files."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sepconv.blocks import DepthwiseSeparableBlock, InvertedResidual
from sepconv.models import (
    MobileNetV1,
    MobileNetV2,
    mobilenet_v1,
    mobilenet_v1_small,
    mobilenet_v2,
    mobilenet_v2_small,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_published_parameter_counts():
    assert n_params(mobilenet_v1()) == 4_231_976  # TF-slim / Keras MobileNet 1.0 (trainable)
    assert n_params(mobilenet_v2()) == 3_504_872  # torchvision mobilenet_v2


def test_parameter_counts_on_the_meta_device_and_without_classifier():
    # Without the 1024*1000 + 1000 classifier: TF-slim's 3,185,088 conv weights + 21,888 BN params.
    assert n_params(mobilenet_v1(num_classes=0, device="meta")) == 3_185_088 + 21_888
    assert n_params(mobilenet_v2(num_classes=0, device="meta")) == 3_504_872 - (1280 * 1000 + 1000)


def test_full_size_forward_shapes():
    x = torch.randn(2, 3, 32, 32)
    for factory in (mobilenet_v1, mobilenet_v2):
        model = factory(0.25, num_classes=7).eval()
        assert model(x).shape == (2, 7)
        assert model.forward_features(x).shape[-2:] == (1, 1)  # stride 32


def test_v1_layout_and_widths():
    model = mobilenet_v1(0.5, in_chans=1)
    blocks = [m for m in model.features if isinstance(m, DepthwiseSeparableBlock)]
    assert len(blocks) == 13 and not any(b.has_residual for b in blocks)
    assert model.features[0].conv.in_channels == 1 and model.features[0].conv.out_channels == 16
    assert [b.stride for b in blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert model.num_features == 512 and isinstance(model.features[0].act, nn.ReLU6)
    assert mobilenet_v1(0.1).features[1].conv_dw.conv.in_channels == 8  # min_depth


def test_v2_layout_matches_torchvision():
    model = mobilenet_v2()
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    assert len(model.features) == 19 and len(blocks) == 17
    assert sum(b.use_res_connect for b in blocks) == 10
    keys = set(model.state_dict())
    for key in (
        "features.0.0.weight",
        "features.0.1.running_mean",
        "features.1.conv.0.0.weight",
        "features.1.conv.1.weight",
        "features.1.conv.2.weight",
        "features.2.conv.3.bias",
        "features.18.0.weight",
        "classifier.1.weight",
    ):
        assert key in keys, key
    assert model.last_channel == 1280 and isinstance(model.classifier[0], nn.Dropout)
    assert model.classifier[0].p == 0.2
    assert mobilenet_v2(1.4).last_channel == 1792


@torch.no_grad()
def test_reference_initialisation():
    torch.manual_seed(0)
    v2 = mobilenet_v2()
    conv = v2.features[18][0]  # 1x1, 320 -> 1280: kaiming normal, fan_out = 1280
    assert abs(conv.weight.std().item() - math.sqrt(2 / 1280)) < 0.05 * math.sqrt(2 / 1280)
    linear = v2.classifier[1]
    assert abs(linear.weight.std().item() - 0.01) < 0.001 and linear.bias.abs().max() == 0
    v1 = mobilenet_v1()
    for module in (v1.features[13].conv_pw.conv, v1.classifier[1]):
        w = module.weight
        assert w.abs().max() <= 0.18 + 1e-6  # truncated at 2 std
        assert abs(w.std().item() - 0.09 * 0.88) < 0.005  # std of N(0, 0.09) truncated at 2 std
    for model in (v1, v2):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert (m.weight == 1).all() and (m.bias == 0).all()


@pytest.mark.parametrize("size, in_chans", [(8, 1), (32, 3)])
def test_small_variants(size, in_chans):
    for factory in (mobilenet_v1_small, mobilenet_v2_small):
        model = factory(size, width_mult=0.25, in_chans=in_chans).eval()
        x = torch.randn(1, in_chans, size, size)
        assert model(x).shape == (1, 10)
        features = model.forward_features(x)
        assert features.shape[-1] == (4 if (factory is mobilenet_v2_small and size == 32) else 2)
    # same parameters as the full-size network, only strides differ
    assert n_params(mobilenet_v2_small(32, num_classes=1000, device="meta")) == 3_504_872
    assert n_params(mobilenet_v1_small(8, num_classes=1000, device="meta")) == 4_231_976
    with pytest.raises(ValueError):
        mobilenet_v1_small(16)


def test_weights_file_round_trip(tmp_path):
    torch.manual_seed(1)
    source = mobilenet_v2_small(8, width_mult=0.25, in_chans=1)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = mobilenet_v2_small(8, width_mult=0.25, in_chans=1, weights=path).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), source.eval()(x))
    with pytest.raises(ValueError, match="does not fit"):
        mobilenet_v2_small(8, width_mult=0.5, in_chans=1, weights=path)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError):
        mobilenet_v1(0.25, weights=bad)


def test_bad_arguments():
    with pytest.raises(ValueError):
        mobilenet_v1(0)
    with pytest.raises(ValueError):
        MobileNetV2(strides=[1, 2])
    with pytest.raises(ValueError):
        MobileNetV1(num_classes=-1)


def test_dtype_reaches_every_submodule():
    model = mobilenet_v2_small(8, width_mult=0.25, in_chans=1, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.randn(1, 1, 8, 8, dtype=torch.float64)).dtype == torch.float64
