"""The demo's data, CNN and training helpers."""

from __future__ import annotations

import pytest
import torch

import sepconv
from sepconv.models import digits


@pytest.fixture(scope="module")
def split():
    return digits.load_digits_split(0)


def test_split_is_stratified_standardised_and_seeded(split):
    assert split.x_train.shape == (1437, 1, 8, 8) and split.x_test.shape == (360, 1, 8, 8)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert abs(float(split.x_train.mean())) < 1e-5 and abs(float(split.x_train.std()) - 1) < 1e-4
    assert torch.bincount(split.y_test).min() >= 35
    again = digits.load_digits_split(0)
    assert torch.equal(again.x_test, split.x_test)
    assert not torch.equal(digits.load_digits_split(1).y_test, split.y_test)


def test_cnn_shapes_and_separable_twin_matches_conversion():
    dense = digits.digits_cnn(16)
    assert dense(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    twin = digits.digits_cnn(16, separable=True, rank=2)
    converted = sepconv.to_separable(dense, rank=2, exclude=digits.STEM)
    assert isinstance(twin.features[0][0], torch.nn.Conv2d)  # the stem stays dense
    for name in ("features.1.0", "features.3.0"):
        a, b = twin.get_submodule(name), converted.get_submodule(name)
        assert isinstance(a, sepconv.SeparableConv2d) and isinstance(b, sepconv.SeparableConv2d)
        assert a.depthwise.weight.shape == b.depthwise.weight.shape
        assert a.pointwise.weight.shape == b.pointwise.weight.shape


def test_training_is_deterministic_and_learns(split):
    from sepconv.demo.pipeline import deterministic

    x, y = split.x_train[:640], split.y_train[:640]
    accuracies = []
    with deterministic(1):
        for _ in range(2):
            torch.manual_seed(0)
            model = digits.digits_cnn(8)
            losses = digits.train(model, x, y, epochs=2, lr=0.01, fill=split.background)
            assert len(losses) == 2 and losses[1] < losses[0]
            accuracies.append(digits.evaluate(model, split.x_test, split.y_test))
            assert not model.training
    assert accuracies[0] == accuracies[1] and accuracies[0] > 0.3


def test_epoch_batches_and_shift(split):
    a = list(digits.epoch_batches(split.x_train, split.y_train, batch_size=64, epoch=0, seed=0))
    b = list(digits.epoch_batches(split.x_train, split.y_train, batch_size=64, epoch=0, seed=0))
    assert len(a) == 1437 // 64 and all(x.shape == (64, 1, 8, 8) for x, _ in a)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(50, 1, 1, 1)
    shifted = digits.random_shift(x, torch.Generator().manual_seed(0), fill=-1.0)
    assert shifted.shape == x.shape and (shifted == -1).any()
    assert digits.batches(split.x_test, 100, limit=250)[-1].shape[0] == 50
    with pytest.raises(ValueError):
        digits.train(digits.digits_cnn(4), split.x_train, split.y_train, epochs=0)
