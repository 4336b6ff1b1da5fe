"""Replayed plans (``sepconv.layers.plans``): a sequence's second inference call replays the
first call's kernel steps, and any change after the first call that the steps depend on is
seen: the result always equals a call that asks everything afresh, and the modules' own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sepconv.blocks import (
    ConvNormAct,
    DepthwiseSeparableBlock,
    InvertedResidual,
    SqueezeExcite,
)
from sepconv.blocks.fused import run_sequential
from sepconv.layers import plans
from sepconv.models import mobilenet_v2_small
from tests.blocks.test_fused import _module_by_module, _randomise_norms
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


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_norms(mobilenet_v2_small(input_size=8, width_mult=0.5), seed).eval()


@pytest.mark.parametrize("programs", ["on", "off"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_second_call_replays_the_first(channels_last, programs, monkeypatch, kernels_on):
    monkeypatch.setenv("SEPCONV_KERNELS_PROGRAMS", programs)
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    replays = count_replays(monkeypatch)
    with torch.inference_mode():
        first = model(x)
        assert replays[0] == 0
        second = model(x)  # (the first replay: in Python, then compiled)
        replays[0] = 0
        third = model(x)
    # The features and the classifier; replayed in Python, the blocks' plans taken in too
    # (a program runs their steps itself: sepconv.kernels.programs).
    blocks = sum(isinstance(m, InvertedResidual) for m in model.modules())
    assert replays[0] == 2 + (blocks if programs == "off" else 0)
    assert torch.equal(third, second)
    assert torch.equal(first, second)
    assert torch.equal(second, afresh(model, x, monkeypatch))


def test_no_plan_with_autograd(monkeypatch, kernels_on):
    model = _model()
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    replays = count_replays(monkeypatch)
    for _ in range(2):
        model(x).sum().backward()
    assert replays[0] == 0 and x.grad is not None


def _hooked_norm(model, seen):
    model.features[2].conv[1][1].register_forward_hook(lambda m, i, o: seen.append(1) or o + 1)


def _pre_hooked_conv(model, seen):
    model.features[3].conv[1][0].register_forward_pre_hook(
        lambda m, i: seen.append(1) or (i[0] * 2,)
    )


def _hooked_sequence(model, seen):
    model.features[2].conv.register_forward_hook(lambda m, i, o: seen.append(1) or o - 1)


def _hooked_block(model, seen):  # (a block the features' plan takes in)
    model.features[4].register_forward_hook(lambda m, i, o: seen.append(1) or o * 0.5)


def _patched_block(model, seen):
    block = model.features[5]
    original = block.forward
    block.forward = lambda x: seen.append(1) or original(x) + 1


def _shortcut_dropped(model, seen):
    model.features[6].use_res_connect = False


def _patched_forward(model, seen):
    norm = model.features[2].conv[3]
    norm.forward = lambda x: seen.append(1) or x * 3


class _LoudNorm(nn.BatchNorm2d):
    def forward(self, x):
        self.seen.append(1)
        return super().forward(x) * 2


def _class_assigned(model, seen):  # (a class of its own forward, its tables unchanged)
    norm = model.features[3].conv[1][1]
    norm.__class__ = _LoudNorm
    _LoudNorm.seen = seen  # (a class attribute: an instance one would change its __dict__)


def _train_mode(model, seen):
    model.features[3].train()


def _replaced_weight(model, seen):
    conv = model.features[2].conv[1][0]
    conv.weight = nn.Parameter(torch.randn_like(conv.weight))


def _weight_changed_in_place(model, seen):
    with torch.no_grad():
        model.features[3].conv[2].weight.mul_(-1.5)


def _data_assigned(model, seen):
    conv = model.features[2].conv[0][0]
    conv.weight.data = torch.randn_like(conv.weight)


def _weight_made_double(model, seen):
    conv = model.features[3].conv[2]  # (the modules raise: float input, double weight)
    conv.weight.data = conv.weight.data.double()


def _eps_changed(model, seen):
    model.features[2].conv[1][1].eps = 0.5


def _activation_replaced(model, seen):
    model.features[2].conv[1]._modules["2"] = nn.Hardtanh(-0.2, 0.3)


def _clamp_changed(model, seen):
    model.features[3].conv[0][2].max_val = 0.25


def _stage_removed(model, seen):
    del model.features[3].conv._modules["3"]  # (the projection's norm)


CHANGES = [
    _hooked_norm,
    _pre_hooked_conv,
    _hooked_sequence,
    _hooked_block,
    _patched_block,
    _shortcut_dropped,
    global_hook,
    _patched_forward,
    _class_assigned,
    _train_mode,
    _replaced_weight,
    _weight_changed_in_place,
    _data_assigned,
    _weight_made_double,
    _eps_changed,
    _activation_replaced,
    _clamp_changed,
    _stage_removed,
    kernels_off,
    one_thread,
]
_SEEN = {
    _hooked_norm,
    _pre_hooked_conv,
    _hooked_sequence,
    _hooked_block,
    _patched_block,
    global_hook,
    _patched_forward,
    _class_assigned,
}


def _check_changes(changes, channels_last: bool, seed: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SEPCONV_KERNELS", "on")
        model = _model(seed)
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            model(x)  # (records the plans)
        seen: list[int] = []
        with changed(changes, model, seen, monkeypatch):
            if _weight_made_double in changes:  # (as the modules do, not a misread weight)
                with pytest.raises(RuntimeError, match="scalar type|weight type"), torch.no_grad():
                    model(x)
                return
            with torch.no_grad():
                out = model(x)
            assert seen or not _SEEN.intersection(changes)
            assert torch.equal(out, afresh(model, x, monkeypatch))
            close_to(out, _module_by_module(model, x))


test_each_change_is_seen, test_changes_after_the_first_call_are_seen = change_tests(
    _check_changes, CHANGES
)


def test_new_input_shape_records_again(monkeypatch, kernels_on):
    model = _model()
    replays = count_replays(monkeypatch)
    with torch.no_grad():
        for size in (8, 8, 10, 10, 8):
            x = torch.randn(1, 3, size, size)
            out = model(x)
            assert torch.equal(out, afresh(model, x, monkeypatch))
    assert replays[0] > 0


def test_plans_do_not_keep_models_alive(kernels_on):
    import gc
    import weakref

    class Extractor:  # (a hook's object that holds the model: a cycle through its plans)
        def __init__(self, model):
            self.model = model

        def hook(self, module, inputs, output):
            pass

    for hooked in (False, True):
        model = _model()
        with torch.no_grad():
            model(torch.randn(1, 3, 8, 8))
        assert plans.plan_of(model.features) is not None
        if hooked:
            model.features.register_forward_hook(Extractor(model).hook)
            model.register_load_state_dict_post_hook(Extractor(model).hook)
        ref = weakref.ref(model)
        del model
        gc.collect()
        assert ref() is None


def test_children_reordered_in_place_are_seen(monkeypatch, kernels_on):
    """A sequence runs its children in their order: the same entries put in another order
    (the child table compares equal) record the plan afresh."""
    seq = nn.Sequential(ConvNormAct(8, 8, 1), ConvNormAct(8, 8, 3, groups=8), ConvNormAct(8, 8, 1))
    seq = _randomise_norms(seq).eval()
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        run_sequential(seq, x)  # (records the plan)
        assert plans.plan_of(seq) is not None
        seq._modules["0"] = seq._modules.pop("0")  # (order 1, 2, 0)
        out = run_sequential(seq, x)
        with monkeypatch.context() as patch:
            patch.setattr(plans, "lookup", lambda *args: None)
            expected = run_sequential(seq, x)
    assert torch.equal(out, expected)
    torch.testing.assert_close(out, seq(x), rtol=1e-5, atol=1e-5)


def test_conv_norm_act_alone_runs_as_before(kernels_on):
    """A ConvNormAct outside a sequence takes its one-call path on every call (no plan)."""
    cna = _randomise_norms(ConvNormAct(8, 16, 1)).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        outs = [cna(x) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], _module_by_module(cna, x), rtol=1e-5, atol=1e-5)


def _v1_changes():
    def hooked_norm(block):
        block.conv_dw[1].register_forward_hook(lambda m, i, o: o + 1)

    def train_mode(block):
        block.conv_pw.train()

    def replaced_weight(block):
        conv = block.conv_pw[0]
        conv.weight = nn.Parameter(torch.randn_like(conv.weight))

    def clamp_changed(block):
        block.conv_pw[2].max_val = 0.5

    def squeeze_excite(block):
        block.se = SqueezeExcite(8, 2)

    def stage_appended(block):
        block.conv_pw.append(nn.Hardtanh(-0.1, 0.1))

    return [hooked_norm, train_mode, replaced_weight, clamp_changed, squeeze_excite, stage_appended]


@pytest.mark.parametrize("change", _v1_changes(), ids=lambda f: f.__name__)
def test_v1_block_replays_and_sees_changes(change, monkeypatch, kernels_on):
    """MobileNetV1's block replays its one fused call, and sees what changed since."""
    block = _randomise_norms(DepthwiseSeparableBlock(8, 12)).eval()
    x = torch.randn(2, 8, 9, 9)
    replays = count_replays(monkeypatch)
    with torch.no_grad():
        first, second = block(x), block(x)
    assert replays[0] == 1 and torch.equal(first, second)
    change(block)
    with torch.no_grad():
        out = block(x)
    assert replays[0] == 1
    assert torch.equal(out, afresh(block, x, monkeypatch))
    torch.testing.assert_close(out, _module_by_module(block, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("where", ["hook", "forward"])
def test_observed_blocks_are_not_taken_in(where, monkeypatch, kernels_on):
    """A block hooked or patched before the first call keeps running as a module: the
    features' plan does not take its steps in."""
    model = _model()
    seen: list[int] = []
    block = model.features[4]
    if where == "hook":
        block.register_forward_hook(lambda m, i, o: seen.append(1))
    else:
        original = block.forward
        block.forward = lambda x: seen.append(1) or original(x)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        outs = [model(x) for _ in range(3)]
    assert len(seen) == 3
    assert torch.equal(outs[0], outs[2])
    assert torch.equal(outs[2], afresh(model, x, monkeypatch))


def test_block_subclasses_are_not_taken_in(monkeypatch, kernels_on):
    """A subclass of a block may compute something else around the same layers: the
    features' plan runs it as a module."""

    class Doubled(InvertedResidual):
        def forward(self, x):
            return 2 * super().forward(x)

    model = _model()
    old = model.features[4]
    c, hidden = old.conv[0][0].in_channels, old.conv[0][0].out_channels
    block = Doubled(c, old.conv[2].out_channels, 1, hidden // c)
    block.load_state_dict(old.state_dict())
    model.features[4] = block.eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        outs = [model(x) for _ in range(3)]
    assert torch.equal(outs[0], outs[2])
    assert torch.equal(outs[2], afresh(model, x, monkeypatch))
    torch.testing.assert_close(outs[2], _module_by_module(model, x), rtol=1e-4, atol=1e-4)
