"""The fused separable forward with a stage between the convolutions (MobileNet's depthwise
-> BatchNorm -> ReLU6 -> pointwise, at inference) equals the PyTorch path and the NumPy
reference, and the layers take it only where it is exact."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepconv import SeparableConv1d, SeparableConv2d, reference
from sepconv.functional.conv import MidStage, separable_forward
from sepconv.kernels import _build, dispatch
from tests.conftest import assert_close_to_reference
from tests.kernels.helpers import (
    Case,
    cases,
    count_mid_kernel_calls,
    env,
    numpy_separable,
    output_fits,
    tile_gemm,
)
from tests.kernels.test_forward import (
    FEW_TILE_CASES,
    MANY_TILE_CASES,
    RTOL,
    WHOLE_CALL_CASES,
    _close,
)


@st.composite
def mid_stages(draw, channels: int, dtype=torch.float32) -> MidStage:
    """A random norm (or none; affine or not) and clamp (none, ReLU, ReLU6, Hardtanh)."""
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, low=None):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return (t.abs() + low if low is not None else t).to(dtype)

    norm = {}
    if draw(st.booleans()):
        affine = draw(st.booleans())
        norm = dict(
            running_mean=rnd(channels),
            running_var=rnd(channels, low=0.25),
            weight=rnd(channels) if affine else None,
            bias=rnd(channels) if affine else None,
            eps=draw(st.sampled_from((1e-5, 1e-3, 0.1))),
        )
    kind = draw(st.sampled_from(("none", "relu", "relu6", "hardtanh")))
    lo, hi = {"none": (None, None), "relu": (0.0, None), "relu6": (0.0, 6.0)}.get(
        kind, (-0.5, 0.75)
    )
    return MidStage(**norm, lo=lo, hi=hi)


def _numpy_norm(stage: MidStage) -> tuple | None:
    if stage.running_mean is None:
        return None
    tensors = (stage.running_mean, stage.running_var, stage.weight, stage.bias)
    return (*[None if t is None else t.double().numpy() for t in tensors], stage.eps)


def _reference(case: Case, x, weights, mid: MidStage, post: MidStage | None = None) -> np.ndarray:
    out = numpy_separable(case, x, weights, mid_norm=_numpy_norm(mid), mid_clamp=(mid.lo, mid.hi))
    if post is not None:
        norm = _numpy_norm(post)
        if norm is not None:
            out = reference.batch_norm_inference(out, *norm)
        if post.lo is not None or post.hi is not None:
            out = np.clip(out, post.lo, post.hi)
    return out


def _pytorch(*args, mid: MidStage, post: MidStage | None = None) -> torch.Tensor:
    with env("off"):
        return separable_forward(*args, mid=mid, post=post)


def check_mid(
    case: Case,
    mid: MidStage,
    dtype=torch.float32,
    rtol: float = RTOL,
    post: MidStage | None = None,
) -> None:
    """The kernel's output equals the PyTorch path's and the NumPy reference's (with the
    stage ``mid`` between the convolutions and ``post``, if given, after them)."""
    x = case.input(dtype)
    weights = case.weights(dtype)
    args = (x, *weights, case.stride, case.dilation, case.plan(), case.mode)
    with torch.no_grad():
        fast = dispatch.separable(
            *args, mid=mid.kernel_args(), post=None if post is None else post.kernel_args()
        )
    if not output_fits(case):
        assert fast is None
        return
    assert fast is not None, case
    with torch.no_grad():
        expected = _pytorch(*args, mid=mid, post=post)
    scale = 0.0
    if post is not None:  # (the output's magnitude before the clamp)
        unclamped = replace(post, lo=None, hi=None)
        scale = float(np.abs(_reference(case, x, weights, mid, unclamped)).max(initial=0.0))
    assert_close_to_reference(fast, expected.double().numpy(), max(rtol, RTOL), scale)
    assert_close_to_reference(fast, _reference(case, x, weights, mid, post), rtol, scale)


@given(data=st.data(), case=cases())
def test_mid_stage_matches(data, case, kernels_built):
    mid = data.draw(mid_stages(case.C * case.M))
    with env("on"):
        check_mid(case, mid)


@settings(max_examples=25)
@given(data=st.data(), case=cases(max_size=30, rank=2))
def test_mid_stage_matches_in_float64(data, case, kernels_built):
    mid = data.draw(mid_stages(case.C * case.M, torch.float64))
    with env("on"):
        check_mid(case, mid, torch.float64, rtol=1e-10)


@settings(max_examples=40)
@given(data=st.data(), case=cases())
def test_stage_after_the_convolutions_matches(data, case, kernels_built):
    """A norm over the outputs and a clamp after the pointwise convolution (SeparableConv's
    norm_layer / act_layer, MobileNet's projection norm), with or without a stage between."""
    mid = data.draw(mid_stages(case.C * case.M))
    post = data.draw(mid_stages(case.O))
    with env("on"):
        check_mid(case, mid, post=post)


@settings(max_examples=15)
@given(data=st.data(), case=cases(max_size=30, rank=2))
def test_stage_after_the_convolutions_in_float64(data, case, kernels_built):
    mid = data.draw(mid_stages(case.C * case.M, torch.float64))
    post = data.draw(mid_stages(case.O, torch.float64))
    with env("on"):
        check_mid(case, mid, torch.float64, rtol=1e-10, post=post)


@pytest.mark.parametrize("gemm", sorted(_build.TILE_GEMM))
@settings(max_examples=5)
@given(data=st.data())
def test_stage_after_the_convolutions_on_every_path(gemm, data, kernels_built):
    """Tiles, threads sharing few tiles, the whole call: each path applies the norm (folded
    into the pointwise weight) and clamps the output it wrote."""
    with env("on"), tile_gemm(gemm):
        for case in MANY_TILE_CASES + FEW_TILE_CASES + WHOLE_CALL_CASES[::3]:
            post = data.draw(mid_stages(case.O))
            check_mid(case, data.draw(mid_stages(case.C * case.M)), post=post)


@pytest.mark.parametrize("gemm", sorted(_build.TILE_GEMM))
@settings(max_examples=5)
@given(data=st.data())
def test_mid_stage_on_every_path(gemm, data, kernels_built):
    """Tiles of rows and row pieces, threads sharing few tiles, the whole call at once: each
    path clamps the intermediate it wrote."""
    with env("on"), tile_gemm(gemm):
        for case in MANY_TILE_CASES + FEW_TILE_CASES + WHOLE_CALL_CASES[::3]:
            check_mid(case, data.draw(mid_stages(case.C * case.M)))


def test_mid_stage_in_bfloat16(kernels_on):
    if not dispatch._bf16_supported():
        pytest.skip("no native bfloat16 on this CPU")
    case = Case(
        2, 2, 24, 1, 16, 1, (12, 12), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True
    )
    gen = torch.Generator().manual_seed(3)
    mid = MidStage(
        torch.randn(24, generator=gen).bfloat16(),
        (torch.rand(24, generator=gen) + 0.5).bfloat16(),
        torch.randn(24, generator=gen).bfloat16(),
        torch.randn(24, generator=gen).bfloat16(),
        1e-3,
        0.0,
        6.0,
    )
    check_mid(case, mid, torch.bfloat16, rtol=3e-2)


def test_nan_passes_the_clamp(kernels_on):
    """ReLU6 of NaN is NaN in PyTorch; the fused clamp keeps it so."""
    case = Case(2, 1, 4, 1, 3, 1, (6, 6), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", False)
    x = case.input()
    x[0, 1, 2, 2] = float("nan")
    args = (x, *case.weights(), case.stride, case.dilation, case.plan(), case.mode)
    with torch.no_grad():
        fast = dispatch.separable(*args, mid=MidStage(lo=0.0, hi=6.0).kernel_args())
    assert torch.isnan(fast).any()
    torch.testing.assert_close(fast, _pytorch(*args, mid=MidStage(lo=0.0, hi=6.0)), equal_nan=True)


# ----------------------------------------------------------------------------- layers


def _mobilenet_layer(cls=SeparableConv2d, act="relu6") -> nn.Module:
    if act == "hardtanh":
        act = nn.Hardtanh(-0.5, 0.75)
    layer = cls(16, 24, 3, padding=1, mid_norm_layer="batchnorm", mid_act_layer=act)
    _randomise_norm(layer.mid_norm)
    return layer.eval()


def _randomise_norm(norm: nn.Module) -> None:
    """Running statistics and affine parameters away from their identity defaults."""
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.normal_()
        norm.bias.normal_()


def _check_fused_layer(layer: nn.Module, x: torch.Tensor, monkeypatch) -> None:
    calls = count_mid_kernel_calls(monkeypatch)
    with torch.inference_mode():
        fast = layer(x)
        with env("off"):
            expected = layer(x)
    assert calls[0] == 1
    _close(fast, expected)


@pytest.mark.parametrize("act", ["relu", "relu6", "hardtanh", None])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_layer_fuses_its_inference_mid_stage(act, layout, monkeypatch, kernels_on):
    x = torch.randn(2, 16, 11, 11)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    _check_fused_layer(_mobilenet_layer(act=act), x, monkeypatch)


def test_layer_1d_fuses_its_mid_stage(monkeypatch, kernels_on):
    _check_fused_layer(_mobilenet_layer(SeparableConv1d), torch.randn(2, 16, 40), monkeypatch)


def _normed_layer(cls=SeparableConv2d, act="relu", mid=False) -> nn.Module:
    """A separable layer with an inference norm and ``act`` after the pointwise stage (and
    the MobileNet stage between, if ``mid``)."""
    layer = cls(
        16,
        24,
        3,
        padding=1,
        norm_layer="batchnorm",
        act_layer=nn.Hardtanh(-0.5, 0.75) if act == "hardtanh" else act,
        mid_norm_layer="batchnorm" if mid else None,
        mid_act_layer="relu6" if mid else None,
    )
    for norm in (layer.norm, layer.mid_norm):
        if not isinstance(norm, nn.Identity):
            _randomise_norm(norm)
    return layer.eval()


@pytest.mark.parametrize("act", ["relu", "relu6", "hardtanh", None])
@pytest.mark.parametrize("mid", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_layer_fuses_its_norm_and_act_after(act, mid, layout, monkeypatch, kernels_on):
    """``norm_layer`` / ``act_layer`` after the pointwise stage (Xception / Keras style):
    in the one fused call at inference, the modules' result."""
    x = torch.randn(2, 16, 11, 13)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    _check_fused_layer(_normed_layer(act=act, mid=mid), x, monkeypatch)


def test_layer_1d_fuses_its_norm_and_act_after(monkeypatch, kernels_on):
    layer = _normed_layer(SeparableConv1d, "relu6", mid=True)
    _check_fused_layer(layer, torch.randn(2, 16, 40), monkeypatch)


@pytest.mark.parametrize("change", ["training", "silu", "hooked", "grad"])
def test_layer_norm_and_act_after_run_as_modules_where_they_must(change, monkeypatch, kernels_on):
    """A norm in training mode, another activation, a hook, autograd: the modules after the
    pointwise stage run (and the stages before stay fused where they can)."""
    calls = count_mid_kernel_calls(monkeypatch)
    layers = [_normed_layer(), _normed_layer()]
    layers[1].load_state_dict(layers[0].state_dict())
    for layer in layers:
        if change == "training":
            layer.norm.train()
        elif change == "silu":
            layer.act = nn.SiLU()
        elif change == "hooked":
            layer.norm.register_forward_hook(lambda module, args, out: out * 2)
    x = torch.randn(2, 16, 9, 9)
    with torch.set_grad_enabled(change == "grad"):
        out = layers[0](x)
        with env("off"):
            expected = layers[1](x)
    assert calls[0] == 0
    _close(out.detach(), expected.detach())


def _unfused_cases():
    def training(layer):
        layer.mid_norm.train()

    def no_statistics(layer):
        layer.mid_norm = nn.BatchNorm2d(16, track_running_stats=False).eval()

    def group_norm(layer):
        layer.mid_norm = nn.GroupNorm(4, 16)

    def silu(layer):
        layer.mid_act = nn.SiLU()

    def hooked(layer):
        layer.mid_act.register_forward_hook(lambda module, args, out: out * 2)

    def patched(layer):
        layer.mid_norm.forward = lambda x: x + 1

    return [training, no_statistics, group_norm, silu, hooked, patched]


@pytest.mark.parametrize("change", _unfused_cases(), ids=lambda f: f.__name__)
def test_layer_runs_other_mid_stages_module_by_module(change, monkeypatch, kernels_on):
    """A norm in training mode or without statistics, other norms and activations, hooks and
    patched forwards: the modules run one by one, as with the kernels off."""
    calls = count_mid_kernel_calls(monkeypatch)
    x = torch.randn(2, 16, 9, 9)
    layers = [_mobilenet_layer(), _mobilenet_layer()]
    layers[1].load_state_dict(layers[0].state_dict())
    for layer in layers:
        change(layer)
    with torch.no_grad():
        out = layers[0](x)
        with env("off"):
            expected = layers[1](x)
    assert calls[0] == 0
    _close(out, expected)
    for a, b in zip(layers[0].buffers(), layers[1].buffers()):
        torch.testing.assert_close(a, b)  # (training mode: the same running statistics)


def test_layer_with_autograd_takes_pytorch_ops(monkeypatch, kernels_on):
    """Recording autograd history, the eval layer runs PyTorch's ops: the same gradients as
    the modules one by one."""
    calls = count_mid_kernel_calls(monkeypatch)
    layer = _mobilenet_layer()
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    layer(x).square().sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    with env("off"):
        layer(x).square().sum().backward()
    expected = [x.grad] + [p.grad for p in layer.parameters()]
    assert calls[0] == 0
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


def test_frozen_layer_with_input_gradient_takes_pytorch_ops(monkeypatch, kernels_on):
    """Frozen parameters, an input that requires grad: the fused call is offered, the kernels
    decline it (no backward for the stage) and PyTorch's ops give the input gradient."""
    calls = count_mid_kernel_calls(monkeypatch)
    layer = _mobilenet_layer().requires_grad_(False)
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    layer(x).square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    with env("off"):
        layer(x).square().sum().backward()
    assert calls[0] == 0
    torch.testing.assert_close(grad, x.grad)


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_input_gradient_at_the_clamp_bounds(act, monkeypatch, kernels_on):
    """Intermediate values exactly on a bound: ReLU/ReLU6 pass no gradient there (and
    ``torch.clamp`` would); the frozen layer with an input gradient runs its modules."""
    layer = SeparableConv2d(4, 8, 3, padding=1, bias=False, mid_act_layer=act)
    layer = layer.eval().requires_grad_(False)
    x = torch.randn(2, 4, 9, 9)
    x[..., :5] = 0.0  # (depthwise outputs of exactly 0 on the left)
    x.requires_grad_(True)
    layer(x).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    mid = layer.mid_act(layer.depthwise(x))
    layer.pointwise(mid).sum().backward()
    torch.testing.assert_close(grad, x.grad)


def test_mid_stage_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="need running_mean"):
        MidStage(weight=torch.ones(3))
    with pytest.raises(ValueError, match="come together"):
        MidStage(running_mean=torch.zeros(3))
    with pytest.raises(ValueError, match="lo must not exceed hi"):
        MidStage(lo=1.0, hi=0.0)


def test_off_runs_the_layer_module_by_module(monkeypatch):
    """``SEPCONV_KERNELS=off`` is the reference: the stages run as modules (each a row in
    ``sepconv profile``), not as one functional call."""
    layer = _mobilenet_layer()
    with torch.no_grad():
        monkeypatch.setenv("SEPCONV_KERNELS", "off")
        assert not layer._can_fuse_stages()
        monkeypatch.setenv("SEPCONV_KERNELS", "auto")
        assert layer._can_fuse_stages()
