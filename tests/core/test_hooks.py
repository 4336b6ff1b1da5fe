"""Separable layers fuse their two stages only when nothing observes or rewrites a stage."""

from __future__ import annotations

import torch
import torch.nn.utils.parametrize as parametrize
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

import sepconv


def _reference(layer: sepconv.SeparableConv2d, x: torch.Tensor) -> torch.Tensor:
    """The unfused path: each stage called as a module."""
    return layer.pointwise(layer.depthwise(x))


@given(
    stage=st.sampled_from(["depthwise", "pointwise", "norm", "act"]),
    kind=st.sampled_from(["pre", "post"]),
)
@settings(max_examples=16)
def test_stage_hooks_fire_and_see_the_stage_output(stage, kind):
    layer = sepconv.SeparableConv2d(3, 5, 3, padding=1)
    seen = []
    module = getattr(layer, stage)
    if kind == "pre":
        handle = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    else:
        handle = module.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    x = torch.randn(2, 3, 6, 6)
    out = layer(x)
    assert len(seen) == 1
    torch.testing.assert_close(out, _reference(layer, x))
    handle.remove()
    seen.clear()
    layer(x)
    assert seen == []  # fused again once the hook is gone


def test_forward_hook_that_edits_the_depthwise_output_takes_effect():
    layer = sepconv.SeparableConv2d(3, 5, 3)
    x = torch.randn(1, 3, 7, 7)
    plain = layer(x)
    layer.depthwise.register_forward_hook(lambda mod, args, out: out * 0)
    zeroed = layer(x)
    torch.testing.assert_close(zeroed, layer.pointwise.bias.view(1, -1, 1, 1).expand_as(plain))


def test_global_hooks_see_the_stages():
    layer = sepconv.SeparableConv2d(3, 5, 3)
    called = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: called.append(type(mod))
    )
    try:
        layer(torch.randn(1, 3, 5, 5))
    finally:
        handle.remove()
    assert sepconv.DepthwiseConv2d in called and sepconv.PointwiseConv2d in called


def test_pruned_layer_trains_and_uses_the_mask():
    layer = sepconv.SeparableConv2d(4, 6, 3, padding=1)
    prune.l1_unstructured(layer.depthwise, "weight", amount=0.5)
    prune.l1_unstructured(layer.pointwise, "weight", amount=0.5)
    x = torch.randn(2, 4, 5, 5)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        out = layer(x)
        out.square().mean().backward()
        optimizer.step()
    torch.testing.assert_close(layer(x), _reference(layer, x))
    assert (layer.depthwise.weight == 0).sum() >= layer.depthwise.weight.numel() // 2


def test_parametrized_weight_is_used():
    class Doubled(nn.Module):
        def forward(self, weight):
            return 2 * weight

    layer = sepconv.SeparableConv2d(3, 4, 3)
    x = torch.randn(1, 3, 5, 5)
    before = layer(x).detach()
    parametrize.register_parametrization(layer.pointwise, "weight", Doubled())
    bias = layer.pointwise.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), 2 * (before - bias) + bias)


def test_a_replaced_or_patched_stage_runs_its_own_forward():
    class Scaled(sepconv.PointwiseConv2d):
        def forward(self, x):
            return 10 * super().forward(x)

    layer = sepconv.SeparableConv2d(3, 4, 3)
    x = torch.randn(1, 3, 6, 6)
    plain = layer(x).detach()
    scaled = Scaled(3, 4)
    scaled.load_state_dict(layer.pointwise.state_dict())
    layer.pointwise = scaled
    torch.testing.assert_close(layer(x), 10 * plain)
    layer.pointwise = sepconv.PointwiseConv2d(3, 4)
    layer.pointwise.load_state_dict(scaled.state_dict())
    layer.depthwise.forward = lambda inp: torch.zeros(1, 3, 4, 4)
    torch.testing.assert_close(layer(x), layer.pointwise.bias.view(1, -1, 1, 1).expand(1, 4, 4, 4))
