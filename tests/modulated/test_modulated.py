"""Modulated depthwise-separable convolution (issue 7): batched == per-sample loop, variance,
gradients, compile, autocast, channels_last and argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

import sepconv
from sepconv.functional import separable_conv2d
from sepconv.functional.modulated import (
    demodulation_coefficients,
    modulated_separable_conv2d,
    upsample_geometry,
)
from sepconv.layers.modulated import ModulatedSeparableConv2d


def loop_reference(x, dw, pw, styles, *, demodulate, upsample, eps=1e-8, magnitude=False):
    """One sample at a time, in float64, with explicitly modulated and demodulated weights.

    The demodulation is computed from the explicit combined dense weight
    ``W[n, o, c, k] = s[n, c] * sum_m P[o, c*M+m] D[c*M+m, k]``, not from the Gram-matrix
    shortcut the implementation uses. ``magnitude=True`` convolves the absolute values of the
    input and of the modulated weights instead: the summed magnitudes of each output's terms,
    which bound float32's rounding where the terms cancel.
    """
    x, dw, pw, styles = (t.detach().double() for t in (x, dw, pw, styles))
    channels = x.shape[1]
    mult = dw.shape[0] // channels
    kernel = tuple(dw.shape[2:])
    pw = pw.reshape(pw.shape[0], -1, 1, 1)
    outs = []
    for n in range(x.shape[0]):
        dw_n = dw * styles[n].repeat_interleave(mult).reshape(-1, 1, 1, 1)
        pw_n = pw
        if demodulate:
            dense = torch.einsum(
                "ocm,cmk->ock", pw.reshape(-1, channels, mult), dw_n.reshape(channels, mult, -1)
            )
            d = torch.rsqrt(dense.square().sum(dim=(1, 2)) + eps) * (2.0 if upsample else 1.0)
            pw_n = pw * d.reshape(-1, 1, 1, 1)
        xn = x[n : n + 1]
        if magnitude:
            xn, dw_n, pw_n = xn.abs(), dw_n.abs(), pw_n.abs()
        if upsample:
            padding, output_padding = upsample_geometry(kernel)
            mid = F.conv_transpose2d(
                xn,
                dw_n.reshape(channels, mult, *kernel),
                None,
                2,
                padding,
                output_padding,
                channels,
            )
            outs.append(F.conv2d(mid, pw_n))
        else:
            outs.append(separable_conv2d(xn, dw_n, pw_n, padding="same"))
    return torch.cat(outs)


def assert_rel_close(actual, expected, rtol, scale=None):
    """``actual`` within ``rtol`` of the largest of ``scale`` (default: ``expected``)."""
    scale = max(1e-12, (expected if scale is None else scale).abs().max().item())
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:g} * {scale:.3g}"


@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    out_channels=st.integers(1, 4),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    mult=st.integers(1, 3),
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    demodulate=st.booleans(),
    upsample=st.booleans(),
    fused=st.sampled_from([None, False, True]),
    seed=st.integers(0, 2**16),
)
# Three products summing to 2e-4 of their size (with demodulation: d from a cancelling weight).
@example(1, 1, 1, 1, 1, 3, 3, 1, False, False, None, 170)
@example(1, 1, 3, 1, 1, 3, 3, 1, True, True, False, 170)
def test_batched_equals_per_sample_loop(
    batch, channels, out_channels, kh, kw, mult, height, width, demodulate, upsample, fused, seed
):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=gen)
    dw = torch.randn(channels * mult, 1, kh, kw, generator=gen)
    pw = torch.randn(out_channels, channels * mult, 1, 1, generator=gen)
    styles = torch.randn(batch, channels, generator=gen) + 1.0
    out = modulated_separable_conv2d(
        x, dw, pw, styles, demodulate=demodulate, upsample=upsample, fused_modconv=fused
    )
    expected = loop_reference(x, dw, pw, styles, demodulate=demodulate, upsample=upsample)
    terms = loop_reference(
        x, dw, pw, styles, demodulate=demodulate, upsample=upsample, magnitude=True
    )
    scale = 2 if upsample else 1
    assert out.shape == (batch, out_channels, scale * height, scale * width)
    assert out.dtype == torch.float32
    # Relative to the summed magnitudes, not to the largest output: where the terms cancel,
    # float32 keeps only their rounding (e.g. three terms summing to 2e-4 of their size).
    assert_rel_close(out, expected, 1e-5, scale=terms)


def test_flat_pointwise_weight_and_valid_padding():
    x, dw, pw, s = (
        torch.randn(2, 3, 6, 6),
        torch.randn(6, 1, 3, 3),
        torch.randn(4, 6),
        torch.rand(2, 3) + 0.5,
    )
    out = modulated_separable_conv2d(x, dw, pw, s, padding="valid", demodulate=False)
    dw_n = [dw * s[n].repeat_interleave(2).reshape(-1, 1, 1, 1) for n in range(2)]
    expected = torch.cat(
        [separable_conv2d(x[n : n + 1], dw_n[n], pw, padding="valid") for n in range(2)]
    )
    assert out.shape == (2, 4, 4, 4)
    assert_rel_close(out, expected, 1e-5)


def test_demodulation_coefficients_match_dense_weight():
    """``s^2 @ G^T`` equals the norm of the explicit modulated dense weight."""
    dw, pw, s = (
        torch.randn(12, 1, 3, 3).double(),
        torch.randn(5, 12, 1, 1).double(),
        torch.randn(3, 4).double(),
    )
    dense = torch.einsum("ocm,cmk->ock", pw.reshape(5, 4, 3), dw.reshape(4, 3, 9))
    modulated = dense[None] * s[:, None, :, None]
    expected = torch.rsqrt(modulated.square().sum(dim=(2, 3)) + 1e-8)
    torch.testing.assert_close(demodulation_coefficients(dw, pw, s), expected, rtol=1e-12, atol=0)


@given(
    kernel=st.integers(1, 9),
    delta=st.floats(1e-4, 1e-1),
    seed=st.integers(0, 2**16),
)
def test_demodulation_keeps_its_digits_where_the_combined_weight_cancels(kernel, delta, seed):
    """Two depthwise filters whose pointwise mix cancels to ``delta`` of the terms: float32's
    ``d`` stays within a few ulps times the condition ``1 / delta`` of the float64 value (the
    Gram shortcut ``P G P^T`` squares the condition: ~10% off at ``delta = 1e-3``)."""
    gen = torch.Generator().manual_seed(seed)
    pw = torch.randn(1, 2, generator=gen)
    first = torch.randn(kernel, generator=gen)
    second = -first * (pw[0, 0] / pw[0, 1]) * (1 - delta)
    dw = torch.stack([first, second]).reshape(2, 1, 1, kernel)
    styles = torch.randn(1, 1, generator=gen) + 1.0
    d32 = demodulation_coefficients(dw, pw, styles, eps=0.0)
    d64 = demodulation_coefficients(dw.double(), pw.double(), styles.double(), eps=0.0)
    rel = ((d32.double() - d64) / d64).abs().max().item()
    assert rel <= 16 * torch.finfo(torch.float32).eps / delta


@pytest.mark.parametrize(
    ("upsample", "mult", "kernel"), [(False, 1, 3), (False, 2, 3), (True, 1, 3), (True, 2, 4)]
)
def test_demodulated_output_has_unit_std_per_channel(upsample, mult, kernel):
    layer = ModulatedSeparableConv2d(32, 16, kernel, 8, depth_multiplier=mult, upsample=upsample)
    size = 64 if upsample else 128
    x = torch.randn(2, 32, size, size)
    style = torch.randn(2, 8) * 2.0  # styles far from 1, some negative: demodulation must undo them
    with torch.no_grad():
        out = layer(x, style)
    std = out.std(dim=(2, 3))
    assert ((std - 1).abs() < 0.1).all(), std


def test_gradients_reach_weights_affine_and_input():
    layer = ModulatedSeparableConv2d(4, 3, 3, 5, depth_multiplier=2)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    style = torch.randn(2, 5, requires_grad=True)
    layer(x, style).square().mean().backward()
    for name, tensor in [("x", x), ("style", style), *layer.named_parameters()]:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_gradcheck_float64(upsample, fused):
    g = torch.Generator().manual_seed(1)
    args = [
        torch.randn(2, 2, 3, 3, generator=g),
        torch.randn(4, 1, 3, 2, generator=g),
        torch.randn(3, 4, 1, 1, generator=g),
        torch.randn(2, 2, generator=g) + 1,
    ]
    args = [a.double().requires_grad_() for a in args]
    fn = lambda *a: modulated_separable_conv2d(*a, upsample=upsample, fused_modconv=fused)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


def test_fused_and_unfused_agree_with_grads():
    layer_args = dict(depth_multiplier=2, upsample=False)
    fused = ModulatedSeparableConv2d(6, 5, 3, 4, **layer_args)
    plain = ModulatedSeparableConv2d(6, 5, 3, 4, fused_modconv=False, **layer_args)
    plain.load_state_dict(fused.state_dict())
    x, style = torch.randn(3, 6, 8, 8), torch.randn(3, 4)
    outs = []
    for layer in (fused, plain):
        out = layer(x, style)
        out.sum().backward()
        outs.append(out)
    assert_rel_close(outs[0], outs[1], 1e-5)
    assert_rel_close(fused.depthwise_weight.grad, plain.depthwise_weight.grad, 1e-4)
    assert_rel_close(fused.affine.weight.grad, plain.affine.weight.grad, 1e-4)


def test_torch_compile_fullgraph_matches_eager():
    layer = ModulatedSeparableConv2d(8, 6, 3, 4, depth_multiplier=2)
    x, style = torch.randn(2, 8, 8, 8), torch.randn(2, 4)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert_rel_close(compiled(x, style), layer(x, style), 1e-5)
    up = ModulatedSeparableConv2d(8, 6, 3, 4, upsample=True)
    compiled_up = torch.compile(up, fullgraph=True, backend="aot_eager")
    out = compiled_up(x, style)
    out.sum().backward()
    assert_rel_close(out.detach(), up(x, style).detach(), 1e-5)
    assert up.depthwise_weight.grad is not None


@pytest.mark.parametrize("upsample", [False, True])
def test_bfloat16_autocast(upsample):
    layer = ModulatedSeparableConv2d(16, 8, 3, 4, upsample=upsample)
    x, style = torch.randn(2, 16, 8, 8), torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, style)
    assert out.dtype == torch.bfloat16
    assert_rel_close(out.float(), layer(x, style), 3e-2)
    out.float().sum().backward()
    assert (
        layer.pointwise_weight.grad is not None
        and layer.pointwise_weight.grad.dtype == torch.float32
    )


def test_bfloat16_parameters():
    layer = ModulatedSeparableConv2d(8, 4, 3, 4, dtype=torch.bfloat16)
    ref = ModulatedSeparableConv2d(8, 4, 3, 4)
    ref.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    x, style = torch.randn(2, 8, 6, 6), torch.randn(2, 4)
    out = layer(x.bfloat16(), style.bfloat16())
    assert out.dtype == torch.bfloat16
    assert_rel_close(out.float(), ref(x.bfloat16().float(), style.bfloat16().float()), 3e-2)


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("fused", [None, False, True])
def test_channels_last(upsample, fused):
    layer = ModulatedSeparableConv2d(6, 4, 3, 5, upsample=upsample, fused_modconv=fused)
    x, style = torch.randn(2, 6, 7, 5), torch.randn(2, 5)
    out = layer(x.contiguous(memory_format=torch.channels_last), style)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_rel_close(out, layer(x, style), 1e-5)


def test_layer_parameters_dtype_and_lazy_export():
    assert sepconv.ModulatedSeparableConv2d is ModulatedSeparableConv2d
    layer = ModulatedSeparableConv2d(4, 6, (3, 5), 7, depth_multiplier=2, dtype=torch.float64)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "affine.weight": (4, 7),
        "affine.bias": (4,),
        "depthwise_weight": (8, 1, 3, 5),
        "pointwise_weight": (6, 8, 1, 1),
    }
    assert torch.equal(layer.affine.bias, torch.ones(4, dtype=torch.float64))
    out = layer(
        torch.randn(3, 4, 9, 9, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    )
    assert out.shape == (3, 6, 9, 9) and out.dtype == torch.float64
    assert "style_dim=7" in repr(layer)


def test_layer_calls_functional_with_scaled_weights():
    layer = ModulatedSeparableConv2d(3, 2, 3, 4, demodulate=False)
    x, style = torch.randn(2, 3, 5, 5), torch.randn(2, 4)
    styles = F.linear(style, layer.affine.weight / 2.0, layer.affine.bias)  # 1/sqrt(style_dim)
    expected = loop_reference(
        x,
        layer.depthwise_weight / 3.0,
        layer.pointwise_weight / 3**0.5,
        styles,
        demodulate=False,
        upsample=False,
    )
    assert_rel_close(layer(x, style), expected, 1e-5)


def test_bad_shapes_raise_value_error_naming_expected_shape():
    layer = ModulatedSeparableConv2d(4, 3, 3, 5)
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError, match=r"style must have shape \(N, style_dim\) = \(2, 5\)"):
        layer(x, torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"\(2, 5\).*got shape \(3, 5\)"):
        layer(x, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        layer(torch.randn(2, 3, 6, 6), torch.randn(2, 5))
    dw, pw = torch.randn(4, 1, 3, 3), torch.randn(3, 4, 1, 1)
    with pytest.raises(ValueError, match=r"styles must have shape \(N, C\) = \(2, 4\)"):
        modulated_separable_conv2d(x, dw, pw, torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"styles must have shape \(N, C\) = \(2, 4\)"):
        modulated_separable_conv2d(x, dw, pw, torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"depthwise_weight must have shape"):
        modulated_separable_conv2d(x, torch.randn(6, 1, 3, 3), pw, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"pointwise_weight must have shape \(O, 4, 1, 1\)"):
        modulated_separable_conv2d(x, dw, torch.randn(3, 5, 1, 1), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        modulated_separable_conv2d(x[0], dw, pw, torch.randn(2, 4))
    with pytest.raises(ValueError, match="upsample"):
        modulated_separable_conv2d(x, dw, pw, torch.randn(2, 4), upsample=True, padding=1)
    with pytest.raises(ValueError, match="upsample"):
        ModulatedSeparableConv2d(4, 3, 3, 5, upsample=True, padding="valid")
    with pytest.raises(TypeError):
        ModulatedSeparableConv2d(4, 3, 3, 5, demodulate=1)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("fused", [False, True])
def test_padding_modes_match_loop(mode, fused):
    x, dw, pw = torch.randn(2, 3, 6, 5), torch.randn(6, 1, 3, 4), torch.randn(4, 6, 1, 1)
    s = torch.rand(2, 3) + 0.5
    out = modulated_separable_conv2d(
        x, dw, pw, s, padding="same", padding_mode=mode, fused_modconv=fused, demodulate=False
    )
    expected = torch.cat(
        [
            separable_conv2d(
                x[n : n + 1],
                dw * s[n].repeat_interleave(2).reshape(-1, 1, 1, 1),
                pw,
                padding="same",
                padding_mode=mode,
            )
            for n in range(2)
        ]
    )
    assert_rel_close(out, expected, 1e-5)
