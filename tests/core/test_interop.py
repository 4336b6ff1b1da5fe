"""The layers work with the PyTorch tool chain: tracing, fx, compile, ONNX, dtypes, autograd, saving."""

from __future__ import annotations

import copy
import functools
import io
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv import functional as SF

LAYERS = {
    "separable2d_same_s2_bn_relu": lambda: sepconv.SeparableConv2d(
        4, 8, 3, stride=2, padding="same", norm_layer="batchnorm", act_layer="relu"
    ),
    "separable2d_reflect_mobilenet": lambda: sepconv.SeparableConv2d(
        4,
        8,
        3,
        padding=1,
        padding_mode="reflect",
        mid_norm_layer="bn",
        mid_act_layer="relu6",
        depth_multiplier=2,
    ),
    "separable1d_causal": lambda: sepconv.SeparableConv1d(4, 6, 4, padding="causal", dilation=2),
    "separable3d_same": lambda: sepconv.SeparableConv3d(4, 5, 3, padding="same"),
    "depthwise2d_same_even_kernel": lambda: sepconv.DepthwiseConv2d(
        4, 4, padding="same", depth_multiplier=2
    ),
    "transpose2d": lambda: sepconv.SeparableConvTranspose2d(
        4, 6, 3, stride=2, padding=1, output_padding=1
    ),
    "spatial2d": lambda: sepconv.SpatiallySeparableConv2d(4, 6, 3, padding="same"),
}
SPATIAL = {"separable1d_causal": (11,), "separable3d_same": (5, 6, 7)}


def _example(name: str) -> torch.Tensor:
    return torch.randn(2, 4, *SPATIAL.get(name, (9, 10)))


@pytest.fixture(params=sorted(LAYERS))
def layer_and_input(request):
    return LAYERS[request.param]().eval(), _example(request.param), request.param


def test_jit_trace(layer_and_input):
    layer, x, _ = layer_and_input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, x)
    torch.testing.assert_close(traced(x), layer(x))


def test_fx_symbolic_trace(layer_and_input):
    layer, x, _ = layer_and_input
    graph = torch.fx.symbolic_trace(layer)
    torch.testing.assert_close(graph(x), layer(x))


@pytest.mark.parametrize("name", ["separable2d_same_s2_bn_relu", "separable1d_causal"])
def test_torch_compile(name):
    layer, x = LAYERS[name]().eval(), _example(name)
    compiled = torch.compile(layer)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_onnx_export_runs_in_onnxruntime(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    layer, x = LAYERS[name]().eval(), _example(name)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, layer(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_channels_last_input_gives_same_result():
    layer = sepconv.SeparableConv2d(6, 8, 3, padding="same", depth_multiplier=2)
    x = torch.randn(2, 6, 11, 9)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), layer(x))
    layer_cl = copy.deepcopy(layer).to(memory_format=torch.channels_last)
    torch.testing.assert_close(layer_cl(x.contiguous(memory_format=torch.channels_last)), layer(x))


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)]
)
def test_dtypes(dtype, tol):
    layer = sepconv.SeparableConv2d(4, 8, 3, padding=1, dtype=dtype)
    assert all(p.dtype == dtype for p in layer.parameters())
    x = torch.randn(2, 4, 7, 7, dtype=dtype)
    out = layer(x)
    assert out.dtype == dtype
    expected = layer.double()(x.double())
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@given(
    rank=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.sampled_from([0, 1, "same"]),
    mode=st.sampled_from(["zeros", "replicate", "circular"]),
    mult=st.integers(1, 2),
)
def test_gradcheck_float64(rank, stride, padding, mode, mult):
    fn = getattr(SF, f"separable_conv{rank}d")
    shape = (1, 2, *([5] * rank))
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    dw = torch.randn(2 * mult, 1, *([3] * rank), dtype=torch.float64, requires_grad=True)
    pw = torch.randn(3, 2 * mult, dtype=torch.float64, requires_grad=True)
    db = torch.randn(2 * mult, dtype=torch.float64, requires_grad=True)
    pb = torch.randn(3, dtype=torch.float64, requires_grad=True)
    f = functools.partial(fn, stride=stride, padding=padding, padding_mode=mode)
    assert torch.autograd.gradcheck(lambda *a: f(*a), (x, dw, pw, db, pb))


def test_state_dict_deepcopy_and_pickle_round_trip():
    layer = sepconv.SeparableConv2d(
        4, 8, 3, stride=2, padding="same", norm_layer="bn", act_layer="silu"
    ).eval()
    x = torch.randn(2, 4, 9, 9)
    fresh = sepconv.SeparableConv2d(
        4, 8, 3, stride=2, padding="same", norm_layer="bn", act_layer="silu"
    ).eval()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), layer(x))
    assert set(layer.state_dict()) >= {
        "depthwise.weight",
        "depthwise.bias",
        "pointwise.weight",
        "norm.weight",
    }
    torch.testing.assert_close(copy.deepcopy(layer)(x), layer(x))
    torch.testing.assert_close(pickle.loads(pickle.dumps(layer))(x), layer(x))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(fresh(x), layer(x))


def test_layers_are_nn_conv_subclasses():
    assert isinstance(sepconv.DepthwiseConv2d(3, 3), nn.Conv2d)
    assert isinstance(sepconv.PointwiseConv1d(3, 4), nn.Conv1d)
    assert isinstance(sepconv.DepthwiseConv3d(3, 3), nn.Conv3d)
    assert isinstance(sepconv.DepthwiseConvTranspose2d(3, 3), nn.ConvTranspose2d)
    layer = sepconv.DepthwiseConv2d(3, 3, depth_multiplier=4)
    assert (layer.groups, layer.out_channels, layer.in_channels) == (3, 12, 3)


def test_unbatched_input():
    layer = sepconv.SeparableConv2d(4, 8, 3, padding="same", norm_layer="bn").eval()
    x = torch.randn(4, 9, 9)
    torch.testing.assert_close(layer(x), layer(x.unsqueeze(0)).squeeze(0))


def test_init_keeps_unit_variance_through_the_layer():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 32, 32)
    layer = sepconv.SeparableConv2d(64, 64, 3, padding="same")
    ratio = layer(x).var().item() / x.var().item()
    assert 0.7 < ratio < 1.4
    # PyTorch's default init shrinks the variance about 9x through two stages
    plain = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.Conv2d(64, 64, 1))
    assert plain(x).var().item() / x.var().item() < 0.25


@pytest.mark.parametrize(
    "spec",
    [nn.ReLU, "relu", functools.partial(nn.LeakyReLU, 0.2), torch.relu, nn.GELU(), "hard_swish"],
)
def test_activation_given_as_class_string_partial_function_or_instance(spec):
    layer = sepconv.SeparableConv2d(2, 3, 1, act_layer=spec)
    assert isinstance(layer.act, nn.Module) and not isinstance(layer.act, nn.Identity)
    layer(torch.randn(1, 2, 4, 4))


@pytest.mark.parametrize(
    "spec",
    [
        "batchnorm",
        "groupnorm",
        "layernorm",
        "instancenorm",
        nn.BatchNorm2d,
        functools.partial(nn.GroupNorm, 1),
    ],
)
def test_norm_given_as_string_class_or_partial(spec):
    layer = sepconv.SeparableConv2d(2, 4, 3, norm_layer=spec, mid_norm_layer=spec)
    assert layer.pointwise.bias is None and layer.depthwise.bias is None
    assert layer(torch.randn(2, 2, 5, 5)).shape == (2, 4, 3, 3)


def test_device_and_dtype_reach_every_submodule():
    layer = sepconv.SeparableConv2d(
        4, 8, 3, norm_layer="bn", mid_norm_layer="bn", dtype=torch.float64
    )
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    assert {b.dtype for b in layer.buffers() if b.is_floating_point()} == {torch.float64}
