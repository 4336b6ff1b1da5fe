"""MobileNet blocks at inference: the depthwise conv-norm-act and the 1x1 conv after it run as
one fused call where that is exact, and module by module otherwise, with the same result."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepconv.blocks import ConvNormAct, DepthwiseSeparableBlock, InvertedResidual
from sepconv.blocks import fused as fused_module
from sepconv.models import mobilenet_v1, mobilenet_v1_small, mobilenet_v2, mobilenet_v2_small
from tests.kernels.helpers import count_mid_kernel_calls


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters away from their identity defaults."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
    return model


def _module_by_module(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unfused result: recording autograd history, every module runs its own forward."""
    with torch.enable_grad():
        return model(x).detach()


def _count_calls(monkeypatch, owner, name: str) -> list[int]:
    """A one-element list counting the calls of ``owner.<name>`` from now on."""
    calls = [0]
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def _count_raw_calls(monkeypatch, name: str) -> list[int]:
    """Calls of ``sepconv.kernels._ops.<name>`` from now on (:func:`_count_calls`)."""
    return _count_calls(monkeypatch, fused_module._ops, name)


def _count_fused(monkeypatch) -> list[int]:
    return _count_calls(monkeypatch, fused_module, "separable_forward")


def _check(model: nn.Module, x: torch.Tensor, fused_calls: int, monkeypatch) -> None:
    calls = _count_fused(monkeypatch)
    with torch.no_grad():
        out = model(x)
    assert calls[0] == fused_calls
    expected = _module_by_module(model, x)
    scale = max(1.0, expected.abs().max().item())
    assert (out - expected).abs().max().item() <= 1e-5 * scale


@settings(max_examples=30, deadline=None)
@given(
    cin=st.integers(1, 24),
    cout=st.integers(1, 24),
    stride=st.integers(1, 2),
    kernel=st.sampled_from((3, 5)),
    multiplier=st.integers(1, 2),
    act=st.sampled_from(("relu", "relu6", None)),
    pw_act=st.booleans(),
    size=st.integers(3, 17),
    batch=st.integers(1, 3),
    channels_last=st.booleans(),
)
def test_depthwise_separable_block(
    cin, cout, stride, kernel, multiplier, act, pw_act, size, batch, channels_last, kernels_built
):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEPCONV_KERNELS", "on")
        block = DepthwiseSeparableBlock(
            cin,
            cout,
            kernel,
            stride,
            depth_multiplier=multiplier,
            act_layer=act,
            pw_act=pw_act,
            residual=True,
        )
        block = _randomise_norms(block).eval()
        x = torch.randn(batch, cin, size, size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _check(block, x, 1, patch)


@settings(max_examples=30, deadline=None)
@given(
    cin=st.integers(1, 16),
    cout=st.integers(1, 16),
    stride=st.integers(1, 2),
    expand=st.sampled_from((1, 2, 6)),
    kernel=st.sampled_from((3, 5)),
    dilation=st.integers(1, 2),
    size=st.integers(5, 15),
    batch=st.integers(1, 3),
    channels_last=st.booleans(),
)
def test_inverted_residual(
    cin, cout, stride, expand, kernel, dilation, size, batch, channels_last, kernels_built
):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEPCONV_KERNELS", "on")
        block = InvertedResidual(
            cin, cout, stride, expand_ratio=expand, kernel_size=kernel, dilation=dilation
        )
        block = _randomise_norms(block).eval()
        x = torch.randn(batch, cin, size, size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _check(block, x, 1, patch)


@pytest.mark.parametrize(
    "make",
    [
        lambda: InvertedResidual(8, 8, 1, expand_ratio=6),  # (the shortcut too)
        lambda: InvertedResidual(8, 16, 2, expand_ratio=1),
        lambda: DepthwiseSeparableBlock(8, 12),
        lambda: DepthwiseSeparableBlock(8, 12, pw_act=False),
    ],
    ids=["ir-expand-shortcut", "ir-stride2", "v1", "v1-linear"],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_norms_after_the_fused_call_go_into_it(make, channels_last, monkeypatch, kernels_on):
    """The norm (and activation) after the block's 1x1 conv runs inside the fused call: no
    batch norm module runs at inference, and the result is the modules'."""
    block = _randomise_norms(make()).eval()
    x = torch.randn(2, 8, 12, 12)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = _module_by_module(block, x)
    norms = [0]
    original = torch.nn.functional.batch_norm

    def counted(*args, **kwargs):
        norms[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "batch_norm", counted)
    with torch.no_grad():
        out = block(x)
    assert norms[0] == 0
    scale = max(1.0, expected.abs().max().item())
    assert (out - expected).abs().max().item() <= 1e-5 * scale


def _not_fused_cases():
    def training(block):
        block.train()

    def squeeze_excite(block):
        return DepthwiseSeparableBlock(8, 12, se_ratio=0.25)

    def hooked_depthwise(block):
        block.conv_dw.conv.register_forward_hook(lambda module, args, out: out * 2)

    def hooked_pointwise(block):
        block.conv_pw.register_forward_pre_hook(lambda module, args: (args[0] + 1,))

    def silu(block):
        return DepthwiseSeparableBlock(8, 12, act_layer="silu")

    def group_norm(block):
        return DepthwiseSeparableBlock(8, 12, norm_layer=lambda c: nn.GroupNorm(4, c))

    def same_padding(block):
        block.conv_dw[0] = nn.Conv2d(8, 8, 3, padding="same", groups=8, bias=False)

    return [
        training,
        squeeze_excite,
        hooked_depthwise,
        hooked_pointwise,
        silu,
        group_norm,
        same_padding,
    ]


@pytest.mark.parametrize("change", _not_fused_cases(), ids=lambda f: f.__name__)
def test_block_runs_module_by_module_where_it_must(change, monkeypatch, kernels_on):
    block = DepthwiseSeparableBlock(8, 12)
    block = change(block) or block
    _randomise_norms(block)
    if block.conv_dw.training and change.__name__ != "training":
        block.eval()
    x = torch.randn(2, 8, 9, 9)
    expected_state = {k: v.clone() for k, v in block.state_dict().items()}
    calls = _count_fused(monkeypatch)
    with torch.no_grad():
        out = block(x)
        with monkeypatch.context() as patch:
            patch.setenv("SEPCONV_KERNELS", "off")
            block.load_state_dict(expected_state)  # (training mode updates the statistics)
            expected = block(x)
    assert calls[0] == 0
    torch.testing.assert_close(out, expected)


def test_unbatched_input_runs_module_by_module(monkeypatch, kernels_on):
    """A 3-d input to the blocks' Conv2d is one image, never a batch of 1d rows: the modules
    run, and BatchNorm2d rejects it as without the kernels."""
    block = _randomise_norms(DepthwiseSeparableBlock(8, 12)).eval()
    calls = _count_fused(monkeypatch)
    with torch.no_grad(), pytest.raises(ValueError, match="expected 4D input"):
        block(torch.randn(8, 9, 9))
    assert calls[0] == 0


@pytest.mark.parametrize("make", [mobilenet_v1, mobilenet_v2])
def test_models_fuse_every_block(make, monkeypatch, kernels_on):
    model = _randomise_norms(make(width_mult=0.25, num_classes=10)).eval()
    blocks = sum(
        isinstance(m, (DepthwiseSeparableBlock, InvertedResidual)) for m in model.modules()
    )
    kernel_calls = count_mid_kernel_calls(monkeypatch)
    _check(model, torch.randn(2, 3, 64, 64), blocks, monkeypatch)
    assert kernel_calls[0] == blocks  # (the kernels ran, not only the fused PyTorch path)


def test_off_runs_pytorch(monkeypatch):
    """``SEPCONV_KERNELS=off``: the fused call's PyTorch path (no kernel)."""
    monkeypatch.setenv("SEPCONV_KERNELS", "off")
    block = _randomise_norms(DepthwiseSeparableBlock(8, 12)).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        out = block(x)
    assert os.environ["SEPCONV_KERNELS"] == "off"
    torch.testing.assert_close(out, _module_by_module(block, x))


def test_folded_norms_still_fuse(monkeypatch, kernels_on):
    """After ``sepconv.fold_batchnorm`` the blocks' norms are identities: the blocks still
    fuse, and the network equals the unfolded one."""
    import sepconv

    model = _randomise_norms(mobilenet_v2(width_mult=0.25, num_classes=10)).eval()
    folded = sepconv.fold_batchnorm(model)
    blocks = sum(isinstance(m, InvertedResidual) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    _check(folded, x, blocks, monkeypatch)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["batchnorm", None])
@pytest.mark.parametrize("act", ["relu6", "relu", None])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [None, True])
@pytest.mark.parametrize("route", ["kernel", "pytorch"])
def test_pointwise_conv_norm_act(norm, act, layout, dtype, bias, route, monkeypatch, kernels_on):
    """A 1x1 ConvNormAct as one GEMM with the norm folded in, the clamp in place: the
    modules' result, in the input's layout (a conv bias before the norm too), through the
    kernels' 1x1 forward (float32) or PyTorch's GEMM."""
    monkeypatch.setattr(fused_module, "_pointwise_kernel_on", lambda: route == "kernel")
    kernel_calls = _count_raw_calls(monkeypatch, "pointwise_forward_raw")
    cna = ConvNormAct(12, 20, 1, bias=bias, norm_layer=norm, act_layer=act)
    cna = _randomise_norms(cna).to(dtype)
    cna.eval()
    with torch.no_grad():
        for p in cna.parameters():
            p.normal_()  # (a conv bias too, without a norm)
    x = torch.randn(3, 12, 9, 7, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = fused_module.pointwise_conv_norm_act(cna, x)
    assert out is not None
    assert kernel_calls[0] == (route == "kernel" and dtype == torch.float32)
    expected = _module_by_module(cna, x)
    assert out.stride() == expected.stride()
    scale = max(1.0, expected.abs().max().item())
    assert (out - expected).abs().max().item() <= (
        1e-5 if dtype == torch.float32 else 1e-12
    ) * scale


def _pointwise_declined():
    return {
        "stride 2": (ConvNormAct(12, 20, 1, stride=2), torch.randn(2, 12, 8, 8)),
        "groups": (ConvNormAct(12, 20, 1, groups=2), torch.randn(2, 12, 8, 8)),
        "3x3": (ConvNormAct(12, 20, 3), torch.randn(2, 12, 8, 8)),
        "silu": (ConvNormAct(12, 20, 1, act_layer="silu"), torch.randn(2, 12, 8, 8)),
        "strided input": (ConvNormAct(12, 20, 1), torch.randn(2, 12, 8, 16)[..., ::2]),
        "bfloat16": (ConvNormAct(12, 20, 1).bfloat16(), torch.randn(2, 12, 8, 8).bfloat16()),
    }


@pytest.mark.parametrize("name", sorted(_pointwise_declined()))
def test_pointwise_conv_norm_act_declines(name, kernels_on):
    cna, x = _pointwise_declined()[name]
    with torch.no_grad():
        assert fused_module.pointwise_conv_norm_act(cna.eval(), x) is None


@pytest.mark.parametrize(
    ("entry", "cna", "shape"),
    [
        ("pointwise_conv_norm_act", lambda: ConvNormAct(12, 20, 1), (2, 12, 8, 8)),
        ("stem_conv_norm_act", lambda: ConvNormAct(3, 8, 3, 2), (2, 3, 16, 16)),
    ],
    ids=["pointwise", "stem"],
)
def test_one_call_off_and_with_autograd(entry, cna, shape, monkeypatch):
    one_call = getattr(fused_module, entry)
    cna = _randomise_norms(cna()).eval()
    x = torch.randn(*shape)
    assert one_call(cna, x) is None  # (grad enabled, parameters)
    monkeypatch.setenv("SEPCONV_KERNELS", "off")
    with torch.no_grad():
        assert one_call(cna, x) is None


@pytest.mark.parametrize("make", [mobilenet_v1_small, mobilenet_v2_small])
def test_models_trace_and_export_as_modules(make, tmp_path, kernels_on):
    """Tracing (torch.fx, torch.jit.trace) and ONNX export see the modules, not the fused
    calls, and give the eager result."""
    model = _randomise_norms(make(num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        graph = torch.fx.symbolic_trace(model)
        convs = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        called = {node.target for node in graph.graph.nodes if node.op == "call_module"}
        assert convs <= called  # (every conv a module call in the graph)
        torch.testing.assert_close(graph(x), expected)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), expected)
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [mobilenet_v1_small, mobilenet_v2_small])
def test_frozen_models_give_input_gradients(make, monkeypatch, kernels_on):
    """Saliency maps: frozen parameters, an input that requires grad. The blocks run their
    modules (no fused call writes into a tensor with history), with the modules' gradient."""
    calls = _count_fused(monkeypatch)
    model = _randomise_norms(make(num_classes=10)).eval().requires_grad_(False)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    model(x)[0, 3].backward()
    grad = x.grad.clone()
    x.grad = None
    with monkeypatch.context() as patch:
        patch.setenv("SEPCONV_KERNELS", "off")
        model(x)[0, 3].backward()
    assert calls[0] == 0
    torch.testing.assert_close(grad, x.grad)


def test_blocks_under_autocast_and_vmap_run_the_modules(monkeypatch, kernels_on):
    calls = _count_fused(monkeypatch)
    block = _randomise_norms(InvertedResidual(8, 12, expand_ratio=2)).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x)
        assert out.dtype == torch.bfloat16  # (as the modules: autocast picks the dtype)
        batched = torch.func.vmap(block)(x.unsqueeze(1))
        torch.testing.assert_close(batched.squeeze(1), _module_by_module(block, x))
    assert calls[0] == 0


def _observed_cases():
    def se_hook(block, seen):
        block.se.register_forward_hook(lambda *args: seen.append(1))

    def patched_pointwise(block, seen):
        block.conv_pw.forward = lambda x: seen.append(1) or x[:, :12]

    def appended_act(block, seen):
        block.conv_pw.append(nn.Hardtanh(-0.1, 0.1))

    return [se_hook, patched_pointwise, appended_act]


@pytest.mark.parametrize("change", _observed_cases(), ids=lambda f: f.__name__)
def test_observed_or_changed_block_stages_run(change, monkeypatch, kernels_on):
    """Hooks, patched forwards and appended modules in the V1 block are honoured."""
    block = _randomise_norms(DepthwiseSeparableBlock(8, 12, pw_act=False)).eval()
    seen: list[int] = []
    change(block, seen)
    x = torch.randn(2, 8, 9, 9)
    calls = _count_fused(monkeypatch)
    with torch.no_grad():
        out = block(x)
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setenv("SEPCONV_KERNELS", "off")
        expected = block(x)
    assert calls[0] == 0
    assert len(seen) == (0 if change.__name__ == "appended_act" else 2)
    torch.testing.assert_close(out, expected)


def test_miswired_pointwise_conv_raises_as_the_modules(kernels_on):
    block = _randomise_norms(DepthwiseSeparableBlock(8, 12, depth_multiplier=2)).eval()
    block.conv_pw[0] = nn.Conv2d(8, 12, 1)  # (the depthwise stage gives 16 channels)
    with torch.no_grad(), pytest.raises(RuntimeError, match="to have 8 channels"):
        block(torch.randn(2, 8, 9, 9))


def _count_stem_calls(monkeypatch) -> list[int]:
    return _count_raw_calls(monkeypatch, "dense_forward_raw")


@pytest.mark.parametrize("norm", ["batchnorm", None])
@pytest.mark.parametrize("act", ["relu6", "relu", None])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bias", [None, True])
def test_stem_conv_norm_act(norm, act, layout, bias, monkeypatch, kernels_on):
    """A stem's ConvNormAct (3 -> 16, 3x3 stride 2) in one kernel call: the modules' result
    in the input's layout."""
    calls = _count_stem_calls(monkeypatch)
    cna = _randomise_norms(ConvNormAct(3, 16, 3, 2, bias=bias, norm_layer=norm, act_layer=act))
    cna.eval()
    with torch.no_grad():
        for p in cna.parameters():
            p.normal_()
    x = torch.randn(2, 3, 23, 20)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = fused_module.stem_conv_norm_act(cna, x)
    assert out is not None and calls[0] == 1
    expected = _module_by_module(cna, x)
    assert out.stride() == expected.stride()
    scale = max(1.0, expected.abs().max().item())
    assert (out - expected).abs().max().item() <= 1e-5 * scale


def _stem_declined():
    def cna(*args, **kwargs):
        return ConvNormAct(*args, **kwargs)

    x = torch.randn(2, 3, 16, 16)
    reflect = cna(3, 8, 3, 2)
    reflect[0].padding_mode = "reflect"
    return {
        "five channels": (cna(5, 8, 3, 2), torch.randn(2, 5, 16, 16)),
        "groups": (cna(4, 8, 3, 2, groups=2), torch.randn(2, 4, 16, 16)),
        "taps beyond STEM_TAPS": (cna(3, 8, 11, 2), x),
        "reflect padding": (reflect, x),
        "'same' padding (PaddedConv2d)": (cna(3, 8, 3, 2, padding="same"), x),
        "silu": (cna(3, 8, 3, 2, act_layer="silu"), x),
        "float64": (cna(3, 8, 3, 2).double(), x.double()),
        "strided input": (cna(3, 8, 3, 2), torch.randn(2, 3, 16, 32)[..., ::2]),
        "no output pixel": (cna(3, 8, 5, 1, padding=0), torch.randn(2, 3, 4, 4)),
        "1x1 (pointwise_conv_norm_act's)": (cna(3, 8, 1), x),
    }


@pytest.mark.parametrize("name", sorted(_stem_declined()))
def test_stem_conv_norm_act_declines(name, kernels_on):
    cna, x = _stem_declined()[name]
    with torch.no_grad():
        assert fused_module.stem_conv_norm_act(cna.eval(), x) is None


@pytest.mark.parametrize("make", [mobilenet_v1, mobilenet_v2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_models_run_their_stem_in_one_call(make, channels_last, monkeypatch, kernels_on):
    """The networks' stems take the kernel, and the networks still give the modules'
    result."""
    model = _randomise_norms(make(width_mult=0.25, num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    calls = _count_stem_calls(monkeypatch)
    with torch.no_grad():
        out = model(x)
    assert calls[0] == 1
    torch.testing.assert_close(out, _module_by_module(model, x), rtol=1e-4, atol=1e-5)


def test_residual_is_added_into_the_fused_output(monkeypatch, kernels_on):
    """The shortcut's sum is written into the fused call's fresh output (no tensor of its
    own), the block's input unchanged; the modules' result."""
    block = _randomise_norms(InvertedResidual(8, 8, expand_ratio=4)).eval()
    outputs = []
    original = fused_module._fused_pair

    def recorded(*args):
        out = original(*args)
        if out is not None:
            outputs.append(out.data_ptr())
        return out

    monkeypatch.setattr(fused_module, "_fused_pair", recorded)
    x = torch.randn(2, 8, 9, 9)
    x_before = x.clone()
    with torch.no_grad():
        out = block(x)
    assert outputs and out.data_ptr() == outputs[-1]
    assert torch.equal(x, x_before)
    torch.testing.assert_close(out, _module_by_module(block, x))


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_norm_act_called_alone_runs_in_one_call(kernel_size, monkeypatch, kernels_on):
    """``ConvNormAct.forward`` takes the one-call paths itself (a 1x1 conv, a stem), and
    its own hooks still fire around it."""
    stem_calls = _count_stem_calls(monkeypatch)
    cna = _randomise_norms(ConvNormAct(3, 8, kernel_size, act_layer="relu6")).eval()
    seen = []
    cna.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        out = cna(x)
    assert stem_calls[0] == (kernel_size == 3) and seen == [out.shape]
    torch.testing.assert_close(out, _module_by_module(cna, x))


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_norm_act_scripts(kernel_size, kernels_on):
    """TorchScript compiles ``ConvNormAct`` (its one-call paths are left to eager mode) and
    gives the eager result."""
    cna = _randomise_norms(ConvNormAct(3, 8, kernel_size, act_layer="relu6")).eval()
    scripted = torch.jit.script(cna)
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), cna(x))


def test_stems_beyond_27_weights_need_wide_vectors(monkeypatch, kernels_on):
    """Without AVX-512 only stems of at most 27 weights a filter (3x3 on 3 channels) take
    the kernel, where it was measured faster."""
    x = torch.randn(1, 3, 20, 20)
    small, large = ConvNormAct(3, 8, 3, 2).eval(), ConvNormAct(3, 8, 7, 2).eval()
    monkeypatch.setattr(fused_module, "_wide_vectors", lambda: False)
    with torch.no_grad():
        assert fused_module.stem_conv_norm_act(small, x) is not None
        assert fused_module.stem_conv_norm_act(large, x) is None
        monkeypatch.setattr(fused_module, "_wide_vectors", lambda: True)
        assert fused_module.stem_conv_norm_act(large, x) is not None


def _route_rows_to_the_kernel(monkeypatch) -> None:
    """``_linear_row`` takes the kernel whatever the CPU (on Intel it leaves the 1x1 forward
    to MKL, without AVX2 the GEMV to PyTorch: unmeasured there, but exact)."""
    monkeypatch.setattr(fused_module, "_pointwise_kernel_on", lambda: True)
    monkeypatch.setattr(fused_module._build, "vector_bits", lambda: 512)


@settings(max_examples=25, deadline=None)
@given(
    features=st.integers(1, 300),
    classes=st.integers(1, 300),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_on_one_row_is_one_kernel_call(features, classes, bias, seed, kernels_built):
    """A classifier's ``nn.Linear`` at batch 1 as the 1x1 forward's GEMV: ``nn.Linear``'s
    result within float32 rounding, whatever the widths (K tails, column tails)."""
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(features, classes, bias=bias)
    x = torch.randn(1, features, generator=gen)
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setenv("SEPCONV_KERNELS", "on")
        _route_rows_to_the_kernel(mp)
        calls = _count_raw_calls(mp, "pointwise_forward_raw")
        linear.weight.copy_(torch.randn(classes, features, generator=gen))
        if bias:
            linear.bias.copy_(torch.randn(classes, generator=gen))
        out = fused_module._linear_row(linear, x)
        expected = torch.nn.functional.linear(
            x.double(),
            linear.weight.double(),
            None if linear.bias is None else linear.bias.double(),
        )
    assert calls[0] == 1
    scale = (x.double().abs() @ linear.weight.double().abs().T).max().item() + 1.0
    assert out.shape == (1, classes)
    assert (out.double() - expected).abs().max().item() <= 1e-6 * scale


def _linear_declined():
    hooked = nn.Linear(12, 5)
    hooked.register_forward_hook(lambda *args: None)

    class Scaled(nn.Linear):
        pass

    broadcast_bias = nn.Linear(12, 5)
    broadcast_bias.bias = nn.Parameter(torch.randn(1))  # (F.linear broadcasts it)
    with warnings.catch_warnings():  # (initialising zero-element tensors is a no-op)
        warnings.simplefilter("ignore", UserWarning)
        no_inputs, no_outputs = nn.Linear(0, 5), nn.Linear(12, 0)

    return {
        "two rows": (nn.Linear(12, 5), torch.randn(2, 12)),
        "float64": (nn.Linear(12, 5).double(), torch.randn(1, 12, dtype=torch.float64)),
        "hooked": (hooked, torch.randn(1, 12)),
        "subclass": (Scaled(12, 5), torch.randn(1, 12)),
        "strided input": (nn.Linear(12, 5), torch.randn(1, 24)[:, ::2]),
        "mis-wired": (nn.Linear(13, 5), torch.randn(1, 12)),
        "3-d input": (nn.Linear(12, 5), torch.randn(1, 1, 12)),
        "no inputs": (no_inputs, torch.randn(1, 0)),
        "no outputs": (no_outputs, torch.randn(1, 12)),
        "broadcast bias": (broadcast_bias, torch.randn(1, 12)),
    }


@pytest.mark.parametrize("name", sorted(_linear_declined()))
def test_linear_row_declines(name, monkeypatch, kernels_on):
    _route_rows_to_the_kernel(monkeypatch)
    linear, x = _linear_declined()[name]
    with torch.no_grad():
        assert fused_module._linear_row(linear, x) is None
    x.requires_grad_(True)  # (and with autograd, whatever the module)
    assert fused_module._linear_row(nn.Linear(x.shape[-1] or 1, 5), x) is None


@pytest.mark.parametrize("bits, taken", [(None, False), (128, False), (256, True), (512, True)])
def test_linear_row_needs_avx2(bits, taken, monkeypatch, kernels_on):
    """The GEMV's one column is gemm_f32's tail dot products, built with AVX2 or AVX-512."""
    _route_rows_to_the_kernel(monkeypatch)
    monkeypatch.setattr(fused_module._build, "vector_bits", lambda: bits)
    linear, x = nn.Linear(12, 5), torch.randn(1, 12)
    with torch.no_grad():
        out = fused_module._linear_row(linear, x)
        expected = linear(x)
    assert (out is not None) == taken
    if taken:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [mobilenet_v1, mobilenet_v2])
def test_models_classify_one_image_in_one_call(make, monkeypatch, kernels_on):
    """At batch 1 the classifier runs through the kernel, recorded and replayed with the
    features; its weights are read live (a change in place shows), and a classifier put in
    the Sequential's place still runs as itself."""
    _route_rows_to_the_kernel(monkeypatch)
    calls = _count_calls(monkeypatch, fused_module, "_gemv")
    model = _randomise_norms(make(width_mult=0.25, num_classes=10)).eval()
    linear = model.classifier[1]
    with torch.no_grad():
        linear.weight.normal_()
        linear.bias.normal_()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first, second = model(x), model(x)
        linear.weight.mul_(-2.0)
        changed = model(x)
    assert calls[0] == 3
    linear.weight.data.mul_(-0.5)
    expected = _module_by_module(model, x)
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    linear.weight.data.mul_(-2.0)
    torch.testing.assert_close(changed, _module_by_module(model, x), rtol=1e-4, atol=1e-5)
    model.classifier = nn.Linear(linear.in_features, 3)
    with torch.no_grad():
        assert model(x).shape == (1, 3)
    assert calls[0] == 3


def test_trainable_head_on_frozen_features_learns(monkeypatch, kernels_on):
    """A linear probe: frozen features, a trainable classifier, batch 1 with autograd. The
    features' output records no history, the classifier's parameters do: the classifier runs
    as the module, and its weight gets a gradient."""
    _route_rows_to_the_kernel(monkeypatch)
    model = mobilenet_v2(width_mult=0.25, num_classes=10).eval()
    model.features.requires_grad_(False)
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    assert model.classifier[1].weight.grad is not None
