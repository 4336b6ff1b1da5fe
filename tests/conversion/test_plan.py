"""Plans: rank / energy / budget choices, editing, eligibility, bad input, inplace semantics."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

import sepconv
from sepconv.layers.separable import _SeparableConvNd
from tests.conversion.helpers import SmallCNN, rel_error, same_state, smooth_images, state_snapshot


def separable_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs per sample of every conv in ``model`` (separable stages included: a hook on a stage
    makes the layer call it), counted from the shapes that run."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        k = math.prod(module.kernel_size)
        total += (
            math.prod(output.shape[2:])
            * module.out_channels
            * (module.in_channels // module.groups)
            * k
        )

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(x[:1])
    for h in handles:
        h.remove()
    return total


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return SmallCNN().double().eval()


def test_plan_lists_every_conv_and_prints(cnn):
    plan = sepconv.plan_separable(cnn, input_size=(1, 3, 16, 16))
    names = [layer.name for layer in plan]
    assert names == ["stem.0", "blocks.0", "blocks.1", "heads.proj", "shared"]
    assert plan["heads.proj"].skipped == "1x1 kernel (already pointwise)"
    assert plan["shared"].aliases == ["shared"]
    text = str(plan)
    for name in names:
        assert name in text
    assert "exact" in text and "total" in text
    assert "Plan(exact" in repr(plan)
    rows = plan.as_dicts()
    assert rows[0]["rank"] == 8 and rows[0]["max_rank"] == 8  # min(O=8, 3*3)
    assert plan.summary()["macs_per"] == "sample"
    with pytest.raises(KeyError, match="stem.0"):
        plan["stem"]


def test_monotone_error_in_rank(cnn):
    x = smooth_images(4)
    expected = cnn(x)
    errors, macs = [], []
    for rank in range(1, 10):
        plan = sepconv.plan_separable(
            cnn, rank=rank, input_size=(1, 3, 16, 16), skip_costlier=False
        )
        converted = sepconv.to_separable(cnn, plan)
        errors.append(rel_error(converted(x), expected))
        macs.append(plan.macs_after)
        assert separable_macs(converted, x) == plan.macs_after
    weight_errors = [
        sepconv.plan_separable(cnn, rank=r)["blocks.1"].weight_error for r in range(1, 10)
    ]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(weight_errors))
    assert all(a < b for a, b in itertools.pairwise(macs))
    assert errors[-1] < 1e-10
    assert errors[0] > errors[4] > errors[-1]


def test_rank_is_clamped_and_costlier_layers_are_skipped():
    conv = nn.Conv2d(4, 2, 3)  # O=2: rank 2 is exact and costs 4*2*(9+2)=88 >= 72
    plan = sepconv.plan_separable(conv, rank=5)
    layer = plan[""]
    assert layer.rank is None and "costs 1.22x" in layer.skipped
    assert sepconv.to_separable(conv, plan) is not conv  # a copy, unchanged
    plan = sepconv.plan_separable(conv, rank=5, skip_costlier=False)
    assert plan[""].rank == 2 == plan[""].max_rank
    assert "exact" in plan[""].note


def test_energy_picks_the_smallest_rank(cnn):
    for energy in (0.3, 0.7, 0.95, 1.0):
        plan = sepconv.plan_separable(cnn, energy=energy, skip_costlier=False)
        for layer in plan.converted:
            kept = 1 - layer.weight_error**2
            assert kept >= energy - 1e-9
            if layer.rank > 1:
                lower = float(layer.factors.lost_energy()[layer.rank - 1])
                assert 1 - lower < energy
    assert all(
        layer.rank == layer.max_rank
        for layer in sepconv.plan_separable(cnn, energy=1.0, skip_costlier=False).converted
    )


@pytest.mark.parametrize("budget", [0.25, 0.35, 0.5, 0.8])
def test_budget_is_respected(cnn, budget):
    x = smooth_images(2)
    plan = sepconv.plan_separable(cnn, budget=budget, input_size=(1, 3, 16, 16))
    assert plan.macs_after <= budget * plan.macs_before
    converted = sepconv.to_separable(cnn, plan)
    assert separable_macs(converted, x) == plan.macs_after <= budget * separable_macs(cnn, x)
    assert not plan.notes


def test_budget_error_decreases_as_budget_grows(cnn):
    x = smooth_images(4)
    errors = [
        rel_error(sepconv.to_separable(cnn, budget=b, input_size=(1, 3, 16, 16))(x), cnn(x))
        for b in (0.2, 0.4, 0.7)
    ]
    assert errors[0] >= errors[1] >= errors[2]


def test_unreachable_budget_is_noted(cnn):
    plan = sepconv.plan_separable(cnn, budget=0.01, input_size=(1, 3, 16, 16))
    assert any("not reachable" in note for note in plan.notes)
    assert all(layer.rank == 1 for layer in plan.converted)


def test_budget_needs_an_input_to_count_macs(cnn):
    with pytest.raises(ValueError, match=r"budget=0.5 needs input_size.*or calibration"):
        sepconv.plan_separable(cnn, budget=0.5)
    plan = sepconv.plan_separable(cnn, budget=0.5, calibration=[smooth_images(2)])
    assert plan.summary()["macs_per"] == "sample" and plan.macs_after <= 0.5 * plan.macs_before


def test_rank_without_input_size_counts_per_position(cnn):
    plan = sepconv.plan_separable(cnn, rank=2)
    assert plan.input_size is None and plan.summary()["macs_per"] == "output position"


def test_editing_the_plan(cnn):
    x = smooth_images(2)
    plan = sepconv.plan_separable(cnn, rank=3)
    plan["blocks.1"].rank = 2
    plan.skip("stem.0")
    assert plan["stem.0"].rank is None and plan["stem.0"].skipped == "skipped by user"
    converted = sepconv.to_separable(cnn, plan)
    assert isinstance(converted.stem[0], nn.Conv2d)
    assert converted.blocks[1].depth_multiplier == 2
    assert converted.blocks[0].depth_multiplier == 3
    plan["stem.0"].rank = None  # back in, exact
    assert plan["stem.0"].rank == 8
    with pytest.raises(ValueError, match="1..9"):
        plan["blocks.0"].rank = 10
    with pytest.raises(ValueError, match="cannot become separable"):
        plan["heads.proj"].rank = 1
    assert converted(x).shape == cnn(x).shape


def test_include_exclude(cnn):
    plan = sepconv.plan_separable(cnn, rank=2, include="blocks")
    assert [layer.name for layer in plan.converted] == ["blocks.0", "blocks.1"]
    assert plan["stem.0"].skipped == "not included"
    plan = sepconv.plan_separable(cnn, rank=2, exclude=["blocks.*", "shared"])
    assert [layer.name for layer in plan.converted] == ["stem.0"]
    assert plan["shared"].skipped == "excluded"


class Twice(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(conv, nn.ReLU(), conv)
        self.extra = nn.ModuleList([conv])

    def forward(self, x):
        return self.extra[0](self.body(x))


def test_shared_conv_converted_once_and_stays_shared():
    model = Twice(nn.Conv2d(4, 4, 3, padding=1)).double()
    plan = sepconv.plan_separable(model)
    assert len(plan) == 1 and plan["body.0"].aliases == ["body.0", "body.2", "extra.0"]
    assert "body.2" in plan and plan["body.2"] is plan["body.0"]
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    converted = sepconv.to_separable(model)
    assert isinstance(converted.body[0], _SeparableConvNd)
    assert converted.body[0] is converted.body[2] is converted.extra[0]
    assert rel_error(converted(x), model(x)) < 1e-10
    inplace = sepconv.to_separable(model, inplace=True)
    assert inplace is model and model.body[0] is model.body[2] is model.extra[0]
    assert isinstance(model.body[0], _SeparableConvNd)


def test_depthwise_and_pointwise_are_not_eligible():
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1), sepconv.SeparableConv2d(16, 4, 3)
    )
    plan = sepconv.plan_separable(model, rank=1)
    assert not plan.converted
    assert plan["0"].skipped.startswith("already depthwise")
    assert [layer.name for layer in plan] == ["0", "1"]  # separable layers are not looked into
    assert any("no eligible" in note for note in plan.notes)
    converted = sepconv.to_separable(model, rank=1)
    assert converted is not model
    assert state_snapshot(converted).keys() == model.state_dict().keys()


def test_no_conv_model_comes_back_unchanged():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    before = state_snapshot(model)
    plan = sepconv.plan_separable(model)
    assert len(plan) == 0 and "no eligible" in str(plan)
    out = sepconv.to_separable(model)
    assert same_state(out, before) and same_state(model, before)
    assert sepconv.to_separable(model, inplace=True) is model


def test_inplace_false_never_mutates(cnn):
    cnn.train()
    before = state_snapshot(cnn)
    modules_before = list(cnn.modules())
    calibration = [smooth_images(4, seed=s).double() for s in range(2)]
    converted = sepconv.to_separable(cnn, rank=2, calibration=calibration)
    assert converted is not cnn
    assert same_state(cnn, before)  # BN running stats untouched too
    assert list(cnn.modules()) == modules_before
    assert all(m.training for m in cnn.modules())
    assert isinstance(cnn.blocks[0], nn.Conv2d) and not isinstance(cnn.blocks[0], _SeparableConvNd)
    assert isinstance(converted.blocks[0], _SeparableConvNd)
    assert converted.training


def test_inplace_true_mutates_and_returns_the_model(cnn):
    out = sepconv.to_separable(cnn, rank=2, inplace=True)
    assert out is cnn and isinstance(cnn.blocks[0], _SeparableConvNd)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_name_the_layer(cnn, bad):
    with torch.no_grad():
        cnn.blocks[1].weight[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"blocks\.1.*NaN/Inf"):
        sepconv.plan_separable(cnn)
    with pytest.raises(ValueError, match=r"blocks\.1"):
        sepconv.to_separable(cnn, rank=2)
    sepconv.plan_separable(cnn, exclude="blocks.1")  # excluded layers are not looked at


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"rank": 2, "budget": 0.5}, ValueError, "at most one"),
        ({"rank": 2, "energy": 0.5}, ValueError, "at most one"),
        ({"energy": 1.5}, ValueError, r"energy must be in \(0, 1\]"),
        ({"energy": 0}, ValueError, "energy"),
        ({"budget": -0.1}, ValueError, "budget"),
        ({"budget": float("nan")}, ValueError, "budget"),
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": 1.5}, TypeError, "rank"),
        ({"rank": True}, TypeError, "rank"),
        ({"ridge": -1}, ValueError, "ridge"),
        ({"input_size": (1, 0, 4)}, ValueError, "input_size"),
        ({"calibration": []}, ValueError, "empty"),
        ({"calibration": torch.zeros(1, 3, 8, 8)}, TypeError, "iterable"),
        ({"include": 3}, TypeError, "include"),
    ],
)
def test_bad_options(cnn, options, error, match):
    with pytest.raises(error, match=match):
        sepconv.plan_separable(cnn, **options)


def test_plan_and_options_conflict(cnn):
    plan = sepconv.plan_separable(cnn)
    with pytest.raises(ValueError, match="either a plan or"):
        sepconv.to_separable(cnn, plan, rank=2)
    with pytest.raises(TypeError, match="Plan"):
        sepconv.to_separable(cnn, {"blocks.0": 2})
    with pytest.raises(TypeError, match="nn.Module"):
        sepconv.plan_separable("model")


def test_plan_that_does_not_fit_the_model(cnn):
    plan = sepconv.plan_separable(cnn, rank=2)
    other = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match="does not fit"):
        sepconv.to_separable(other, plan)
    wider = copy.deepcopy(cnn)
    wider.blocks[1] = nn.Conv2d(16, 32, 3)
    with pytest.raises(ValueError, match="does not fit"):
        sepconv.to_separable(wider, plan)


def test_plan_applies_to_a_copy_with_other_weights(cnn):
    """A plan made on one model refactorizes a model whose weights differ."""
    x = smooth_images(2)
    plan = sepconv.plan_separable(cnn)
    other = copy.deepcopy(cnn)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    assert rel_error(sepconv.to_separable(other, plan)(x), other(x)) < 1e-10


def test_failing_example_input_is_a_clear_error(cnn):
    with pytest.raises(ValueError, match="running the model on the example input"):
        sepconv.plan_separable(cnn, input_size=(1, 5, 16, 16))


def test_1d_and_3d_and_custom_subclass():
    class Scaled(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(nn.Conv1d(2, 4, 3))
    assert sepconv.plan_separable(model, rank=1).converted
    model3 = nn.Sequential(nn.Conv3d(2, 8, 3))
    converted = sepconv.to_separable(model3, rank=2)
    assert isinstance(converted[0], sepconv.SeparableConv3d)
    plan = sepconv.plan_separable(nn.Sequential(Scaled(2, 4, 3)), rank=1)
    assert "own behaviour" in plan["0"].skipped


def _conv_params(model: nn.Module) -> int:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    return sum(p.numel() for conv in convs for p in conv.parameters(recurse=False))


@pytest.mark.parametrize("calibrated", [False, True])
@pytest.mark.parametrize("rank", [1, 2, None])
def test_plan_params_match_the_converted_model(cnn, rank, calibrated):
    calibration = [smooth_images(2)] if calibrated else None
    plan = sepconv.plan_separable(cnn, rank=rank, calibration=calibration)
    converted = sepconv.to_separable(cnn, plan)
    assert plan.params_before == _conv_params(cnn)
    assert plan.params_after == _conv_params(converted)
