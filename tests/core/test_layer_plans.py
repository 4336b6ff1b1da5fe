"""Replayed plans of the separable layers (``sepconv.layers.plans``): a ``SeparableConvNd``
call without autograd replays the first call's kernel call, and any change after the first
call that it depends on is seen: the result equals a call that asks everything afresh
(bitwise) and the reference path (``SEPCONV_KERNELS=off``)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepconv import (
    DepthwiseConv1d,
    DepthwiseConv2d,
    DepthwiseConv3d,
    PointwiseConv2d,
    SeparableConv1d,
    SeparableConv2d,
)
from sepconv.kernels import dispatch
from sepconv.layers import plans
from tests.plans_common import (
    afresh,
    change_tests,
    changed,
    close_to,
    count_replays,
    global_hook,
    kernels_off,
    one_thread,
)


def _layer(seed: int = 0, **kwargs) -> nn.Module:
    """A MobileNet-style layer (batch norms and clamps between and after the convolutions),
    its norms' statistics away from their defaults."""
    torch.manual_seed(seed)
    kwargs.setdefault("mid_norm_layer", nn.BatchNorm2d)
    kwargs.setdefault("mid_act_layer", nn.ReLU6)
    kwargs.setdefault("norm_layer", nn.BatchNorm2d)
    kwargs.setdefault("act_layer", nn.ReLU)
    kwargs.setdefault("padding", 1)
    layer = SeparableConv2d(6, 5, 3, **kwargs).eval()
    for norm in layer.modules():
        if isinstance(norm, nn.BatchNorm2d):
            with torch.no_grad():
                norm.running_mean.uniform_(-0.3, 0.3)
                norm.running_var.uniform_(0.5, 1.5)
                norm.weight.uniform_(0.8, 1.2)
                norm.bias.uniform_(-0.2, 0.2)
    return layer


def _reference(layer: nn.Module, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    """The reference path: the stages' own modules, PyTorch's convolutions."""
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setenv("SEPCONV_KERNELS", "off")
        return layer(x)


def _assert_as_asked_afresh(layer, x, out, monkeypatch) -> None:
    assert torch.equal(out, afresh(layer, x, monkeypatch))
    close_to(out, _reference(layer, x, monkeypatch))


@settings(max_examples=20, deadline=None)
@given(
    stride=st.sampled_from([1, 2]),
    padding=st.sampled_from([0, 1, "same"]),
    padding_mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    multiplier=st.sampled_from([1, 2]),
    mid_layers=st.booleans(),
    channels_last=st.booleans(),
    batch=st.integers(1, 3),
    size=st.integers(5, 9),
)
def test_second_call_replays_the_first(
    stride, padding, padding_mode, multiplier, mid_layers, channels_last, batch, size,
    kernels_built,
):  # fmt: skip
    if padding == "same" and stride != 1:
        padding = 1
    none = dict(mid_norm_layer=None, mid_act_layer=None, norm_layer=None, act_layer=None)
    layer = _layer(
        stride=stride,
        padding=padding,
        padding_mode=padding_mode,
        depth_multiplier=multiplier,
        **({} if mid_layers else none),
    )
    x = torch.randn(batch, 6, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SEPCONV_KERNELS", "on")
        replays = count_replays(monkeypatch)
        with torch.no_grad():
            first = layer(x)
            assert replays[0] == 0
            second = layer(x)
        assert replays[0] == 1
        assert torch.equal(first, second)
        _assert_as_asked_afresh(layer, x, second, monkeypatch)


def test_1d_and_unbatched_inputs(monkeypatch, kernels_on):
    layer = SeparableConv1d(4, 3, 3, padding="causal").eval()
    for x in (torch.randn(2, 4, 11), torch.randn(4, 11)):
        with torch.no_grad():
            first, second = layer(x), layer(x)
        assert torch.equal(first, second) and second.shape[:-1] == (*x.shape[:-2], 3)
        _assert_as_asked_afresh(layer, x, second, monkeypatch)


def test_no_plan_with_autograd(monkeypatch, kernels_on):
    layer = _layer(mid_norm_layer=None, mid_act_layer=None, norm_layer=None, act_layer=None)
    x = torch.randn(1, 6, 7, 7, requires_grad=True)
    replays = count_replays(monkeypatch)
    for _ in range(2):
        layer(x).sum().backward()
    assert replays[0] == 0 and x.grad is not None


def test_a_hooked_layer_runs_its_hooks_and_no_plan(monkeypatch, kernels_on):
    layer, seen = _layer(), []
    layer.register_forward_hook(lambda m, i, o: seen.append(1) or o + 1)
    x = torch.randn(1, 6, 7, 7)
    replays = count_replays(monkeypatch)
    with torch.no_grad():
        first, second = layer(x), layer(x)
    assert replays[0] == 0 and len(seen) == 2 and torch.equal(first, second)


def test_new_input_shape_records_again(monkeypatch, kernels_on):
    layer = _layer()
    replays = count_replays(monkeypatch)
    with torch.no_grad():
        for size in (7, 9, 9, 7):
            x = torch.randn(1, 6, size, size)
            _assert_as_asked_afresh(layer, x, layer(x), monkeypatch)
    assert replays[0] == 1  # (the second 9x9 call; the last 7x7 one recorded again)


def test_plans_do_not_keep_layers_alive(kernels_on):
    layer = _layer()
    with torch.no_grad():
        layer(torch.randn(1, 6, 7, 7))
    assert plans.plan_of(layer) is not None
    ref = weakref.ref(layer)
    del layer
    gc.collect()
    assert ref() is None


# Changes after the first call; each (layer, seen) -> an undo function or None. Those in
# _SEEN add a hook or a forward that appends to ``seen``, which must then have run.


def _hooked_mid_norm(layer, seen):
    layer.mid_norm.register_forward_hook(lambda m, i, o: seen.append(1) or o + 1)


def _pre_hooked_pointwise(layer, seen):
    layer.pointwise.register_forward_pre_hook(lambda m, i: seen.append(1) or (i[0] * 2,))


def _hooked_identity(layer, seen):  # (a layer without norm: its act is an Identity)
    layer.act = nn.Identity()
    layer.act.register_forward_hook(lambda m, i, o: seen.append(1) or o - 1)


def _patched_depthwise(layer, seen):
    dw = layer.depthwise
    original = dw.forward
    dw.forward = lambda x: seen.append(1) or original(x) * 2


class _LoudPointwise(PointwiseConv2d):
    def forward(self, x):
        self.seen.append(1)
        return super().forward(x) + 0.5


def _class_assigned(layer, seen):  # (no other change replaces the pointwise stage)
    layer.pointwise.__class__ = _LoudPointwise
    _LoudPointwise.seen = seen  # (a class attribute: an instance one would change its __dict__)


def _train_mode(layer, seen):
    layer.mid_norm.train()


def _replaced_weight(layer, seen):
    layer.pointwise.weight = nn.Parameter(torch.randn_like(layer.pointwise.weight))


def _weight_changed_in_place(layer, seen):
    with torch.no_grad():
        layer.depthwise.weight.mul_(-1.5)


def _data_assigned(layer, seen):
    layer.depthwise.weight.data = torch.randn_like(layer.depthwise.weight)


def _statistics_changed(layer, seen):
    # (both norms' that are still batch norms: _norm_removed may have replaced the last one)
    with torch.no_grad():
        for norm in (layer.mid_norm, layer.norm):
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_var.mul_(3.0)


def _eps_changed(layer, seen):
    layer.mid_norm.eps = 0.5


def _activation_replaced(layer, seen):
    layer.mid_act = nn.Hardtanh(-0.2, 0.3)


def _clamp_changed(layer, seen):
    layer.mid_act.max_val = 0.25


def _norm_removed(layer, seen):
    layer.norm = nn.Identity()


def _stride_changed(layer, seen):
    layer.depthwise.stride = (2, 2)


# (those that run a hook or a forward of the test's, which appends to ``seen``)
_SEEN_CHANGES = [
    _hooked_mid_norm,
    _pre_hooked_pointwise,
    _hooked_identity,
    _patched_depthwise,
    global_hook,
    _class_assigned,
]
_SEEN = set(_SEEN_CHANGES)
CHANGES = [
    *_SEEN_CHANGES,
    _train_mode,
    _replaced_weight,
    _weight_changed_in_place,
    _data_assigned,
    _statistics_changed,
    _eps_changed,
    _activation_replaced,
    _clamp_changed,
    _norm_removed,
    _stride_changed,
    kernels_off,
    one_thread,
]


def _check_changes(changes, channels_last: bool, seed: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SEPCONV_KERNELS", "on")
        layer = _layer(seed)
        x = torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(seed))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            layer(x)  # (records the plan)
        seen: list[int] = []
        with changed(changes, layer, seen, monkeypatch):
            with torch.no_grad():
                out = layer(x)
            assert seen or _SEEN.isdisjoint(changes)
            _assert_as_asked_afresh(layer, x, out, monkeypatch)


test_each_change_is_seen, test_changes_after_the_first_call_are_seen = change_tests(
    _check_changes, CHANGES
)


def _bias_set(conv: nn.Module, bias: nn.Parameter) -> None:
    conv.bias = bias


def _bias_table_set(conv: nn.Module, bias: nn.Parameter) -> None:
    conv._parameters = {**conv._parameters, "bias": bias}  # (a new table, equal by value)


@pytest.mark.parametrize("put", [_bias_set, _bias_table_set])
@pytest.mark.parametrize("where", ["pointwise", "depthwise"])
def test_an_equal_one_element_tensor_put_in_place_is_seen(where, put, kernels_on):
    """A parameter replaced by one of equal value but another dtype is seen (the modules
    raise, as without a plan), by itself or in a new parameter table: one-element tensors
    compare equal by value, which the plan's check must not take for the same tensor."""
    torch.manual_seed(0)
    layer = SeparableConv2d(1, 1, 3, padding=1).eval()  # (biases of one element each)
    x = torch.randn(2, 1, 8, 8)
    conv = getattr(layer, where)
    with torch.no_grad():
        layer(x)  # (records the plan)
        assert plans.plan_of(layer) is not None
        put(conv, nn.Parameter(conv.bias.double()))
        with pytest.raises(RuntimeError, match="bias type"):
            layer(x)


def test_inputs_unlike_the_recorded_one_are_checked(monkeypatch, kernels_on):
    """A replay comes before the input checks, for inputs of the recorded key only: others
    are checked (and an unbatched input of the recorded shape runs as before)."""
    layer = _layer()
    x = torch.randn(2, 6, 8, 8)
    replays = count_replays(monkeypatch)
    with torch.no_grad():
        layer(x)  # (records the plan)
        with pytest.raises(ValueError, match="channels"):
            layer(torch.randn(2, 5, 8, 8))
        with pytest.raises(ValueError, match="must have shape"):
            layer(torch.randn(2, 2, 6, 8, 8))
        out = layer(x[0])
    assert replays == [0]
    assert torch.equal(out, afresh(layer, x[:1], monkeypatch)[0])


@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_layers_replay_and_see_changes(channels_last, monkeypatch, kernels_on):
    """A DepthwiseConvNd call without autograd replays the first one's kernel call; a weight
    changed in place is read, a replaced weight, another stride or a hook is seen."""
    torch.manual_seed(0)
    layer = DepthwiseConv2d(6, 3, padding=1, depth_multiplier=2).eval()
    x = torch.randn(2, 6, 9, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    changes = [
        lambda: None,
        lambda: layer.weight.data.mul_(-1.5),
        lambda: setattr(layer, "weight", nn.Parameter(torch.randn_like(layer.weight))),
        lambda: setattr(layer, "stride", (2, 2)),
        lambda: layer.register_forward_hook(lambda module, args, out: out * 2),
    ]
    replays = count_replays(monkeypatch)
    with torch.no_grad():
        layer(x)  # (records the plan)
        for change in changes:
            change()
            out = layer(x)
            _assert_as_asked_afresh(layer, x, out, monkeypatch)
    assert replays == [2]  # (unchanged, and the weight changed in place)


def test_causal_depthwise_1d_replays(monkeypatch, kernels_on):
    torch.manual_seed(0)
    layer = DepthwiseConv1d(16, 4, padding="causal").eval()
    x = torch.randn(2, 16, 33)
    replays = count_replays(monkeypatch)
    with torch.no_grad():
        first, second = layer(x), layer(x)
        layer.stride = (2,)  # (seen: recorded afresh)
        third = layer(x)
    assert replays == [1]
    assert torch.equal(first, second)
    _assert_as_asked_afresh(layer, x, third, monkeypatch)


def test_depthwise_calls_left_to_pytorch_replay_its_call(monkeypatch, kernels_built):
    """Where ``auto`` measured PyTorch faster, PyTorch's call is what a replay runs; 3d
    inputs, which the kernels never take, record nothing."""
    monkeypatch.setenv("SEPCONV_KERNELS", "auto")
    monkeypatch.setattr(dispatch, "_measure", lambda kernel, pytorch, x: dispatch.PYTORCH)
    torch.manual_seed(0)
    layer = DepthwiseConv2d(5, 3, padding=1).eval()
    x = torch.randn(1, 5, 11, 13)  # (a problem of its own, measured on its first call)
    layer3d = DepthwiseConv3d(4, 3, padding="same", padding_mode="reflect").eval()
    x3d = torch.randn(1, 4, 5, 6, 7)
    replays = count_replays(monkeypatch)
    with torch.no_grad():
        first, second = layer(x), layer(x)
        layer3d(x3d)
        out3d = layer3d(x3d)
    assert replays == [1]
    assert plans.plan_of(layer3d) is None
    assert torch.equal(first, second)
    assert torch.equal(second, _reference(layer, x, monkeypatch))
    assert torch.equal(out3d, _reference(layer3d, x3d, monkeypatch))


def test_plan_mode_asks_hooks_grad_and_the_setting(monkeypatch, kernels_on):
    layer = _layer()
    with torch.no_grad():
        assert plans._layer_mode(layer) == "on"
        handle = layer.register_forward_pre_hook(lambda m, i: None)
        assert plans._layer_mode(layer) is None
        handle.remove()
        monkeypatch.setenv("SEPCONV_KERNELS", "off")
        assert plans._layer_mode(layer) is None
    assert plans._layer_mode(layer) is None  # (autograd on)


@pytest.mark.parametrize("channels_last", [False, True])
def test_auto_replays_the_path_it_measured(channels_last, monkeypatch, kernels_built):
    monkeypatch.setenv("SEPCONV_KERNELS", "auto")
    layer = _layer()
    x = torch.randn(1, 6, 9, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    replays = count_replays(monkeypatch)
    with torch.no_grad():
        first, second = layer(x), layer(x)
    assert replays[0] == 1 and torch.equal(first, second)
    _assert_as_asked_afresh(layer, x, second, monkeypatch)
