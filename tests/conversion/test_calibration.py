"""Calibrated refit: least squares on the layers' real inputs cuts the output error."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sepconv
from tests.conversion.helpers import SmallCNN, rel_error, smooth_images


def test_calibration_reduces_the_output_error():
    torch.manual_seed(0)
    model = SmallCNN().double().eval()
    calibration = [smooth_images(8, seed=s) for s in range(4)]
    held_out = smooth_images(8, seed=99)
    expected = model(held_out)
    svd = sepconv.to_separable(model, rank=2)
    plan = sepconv.plan_separable(model, rank=2, calibration=calibration)
    fitted = sepconv.to_separable(model, plan)
    for layer in plan.converted:
        assert layer.calibrated_error is not None
        assert layer.calibrated_error <= layer.output_error + 1e-12
    assert any(layer.calibrated_error < 0.7 * layer.output_error for layer in plan.converted)
    assert "svd→fit" in str(plan)
    svd_error, fit_error = rel_error(svd(held_out), expected), rel_error(fitted(held_out), expected)
    assert fit_error < 0.7 * svd_error
    # the plan's closed-form error matches the converted layer's measured error
    inputs = []
    handle = model.blocks[1].register_forward_hook(lambda m, i, o: inputs.append((i[0], o)))
    for batch in calibration:
        model(batch)
    handle.remove()
    num = sum(float((fitted.blocks[1](x) - y).detach().square().sum()) for x, y in inputs)
    den = sum(float(y.detach().square().sum()) for _, y in inputs)
    assert abs((num / den) ** 0.5 - plan["blocks.1"].calibrated_error) < 1e-6


def test_calibration_keeps_exact_conversion_exact():
    torch.manual_seed(0)
    model = SmallCNN().double().eval()
    calibration = [smooth_images(4, seed=s) for s in range(2)]
    x = smooth_images(3, seed=5)
    converted = sepconv.to_separable(model, calibration=calibration)
    assert rel_error(converted(x), model(x)) < 1e-8


def test_calibration_accepts_a_dataloader_of_pairs_and_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 4, 3))
    data = TensorDataset(smooth_images(16, dtype=torch.float32), torch.zeros(16, dtype=torch.long))
    loader = DataLoader(data, batch_size=8)
    plan = sepconv.plan_separable(model, rank=1, calibration=loader)
    assert plan.input_size == (1, 3, 16, 16)
    converted = sepconv.to_separable(model, plan)
    assert converted[0].pointwise.bias is not None  # the refit adds a bias
    assert converted[0].pointwise.weight.dtype == torch.float32
    x = data.tensors[0]
    svd = sepconv.to_separable(model, rank=1)
    assert rel_error(converted(x), model(x)) < rel_error(svd(x), model(x))
