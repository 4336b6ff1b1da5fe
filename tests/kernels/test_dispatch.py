"""When the fast path runs: SEPCONV_KERNELS, the no-compiler fallback, tracing, layers, CLI."""

from __future__ import annotations

import warnings

import pytest
import torch

from sepconv import DepthwiseConv1d, DepthwiseConv2d, SeparableConv1d, SeparableConv2d
from sepconv.functional.padding import resolve_padding
from sepconv.kernels import _build, _ops, dispatch, programs
from tests.kernels.helpers import Case, env


def _variant(spatial=(14, 14), stride=(1, 1), layout="contiguous", mult=1):
    return Case(2, 2, 8, mult, 12, 1, spatial, (3, 3), stride, (1, 1), 1, "zeros", layout, True)


def _call(case=None):
    case = case or _variant()
    x = case.input()
    wd, wp, bd, bp = case.weights()
    return dispatch.separable(x, wd, wp, bd, bp, case.stride, case.dilation, case.plan(), case.mode)


@pytest.fixture
def count_calls(monkeypatch):
    calls = {"separable": 0, "depthwise": 0}
    sep, dw = _ops.separable_forward_raw, _ops.depthwise_forward_raw

    def sep_counted(*args):
        calls["separable"] += 1
        return sep(*args)

    def dw_counted(*args):
        calls["depthwise"] += 1
        return dw(*args)

    monkeypatch.setattr(_ops, "separable_forward_raw", sep_counted)
    monkeypatch.setattr(_ops, "depthwise_forward_raw", dw_counted)
    run = programs.Program.run

    def program_counted(self, x):  # (a replayed layer's call runs as a program)
        calls["separable"] += self.kinds.count(programs.OP_SEP)
        calls["depthwise"] += self.kinds.count(programs.OP_DEPTHWISE)
        return run(self, x)

    monkeypatch.setattr(programs.Program, "run", program_counted)
    return calls


@pytest.fixture
def no_compiler(monkeypatch):
    """Simulate a machine where the extension cannot be built."""

    def fail(*args, **kwargs):
        raise _build.BuildError("no C++ compiler found (simulated)")

    _build.reset()
    monkeypatch.setattr(_build, "build", fail)
    monkeypatch.setattr(dispatch, "_warned", set())
    yield
    monkeypatch.undo()
    _build.reset()


def test_env_off_declines(kernels_built):
    with env("off"):
        assert _call() is None


def _big_case():
    return Case(
        2, 2, 16, 1, 24, 1, (40, 40), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True
    )


def test_env_on_and_auto_use_the_kernels(kernels_built):
    for value in ("on", "auto", "AUTO", ""):
        with env(value):
            assert _call(_big_case()) is not None


def test_vector_bits_match_the_cpu(kernels_built):
    flags, bits = _build.cpu_fingerprint(), _build.vector_bits()
    assert bits in (128, 256, 512)
    assert bits < 512 or " avx512f" in flags
    assert bits < 256 or " avx2" in flags


@pytest.mark.parametrize("intel", (True, False))
def test_auto_rule_without_a_measurement(intel, kernels_built, monkeypatch):
    # The rule (no reference to time against, as for calls that record autograd history):
    # PyTorch on planes under 100 pixels, on strided channels_last calls, on channels_last
    # planes up to 28x28 on Intel, and on strided NCHW calls with outputs under 28x28; the
    # kernels otherwise (off Intel also channels_last planes of 100 to 784 pixels).
    monkeypatch.setattr(_build, "cpu_is_intel", lambda: intel)
    channels_last_14x14 = _variant(layout="channels_last")
    to_pytorch = [
        _variant(spatial=(8, 8)),
        _variant(stride=(2, 2)),
        _variant(spatial=(8, 8), layout="channels_last"),
        _variant(spatial=(60, 60), stride=(2, 2), layout="channels_last"),
    ] + [channels_last_14x14] * intel
    to_kernel = [
        _variant(),
        _variant(spatial=(30, 30), layout="channels_last"),
        _variant(spatial=(60, 60), stride=(2, 2)),
    ] + [channels_last_14x14] * (not intel)
    with env("auto"):
        assert all(_call(case) is None for case in to_pytorch)
        assert all(_call(case) is not None for case in to_kernel)
    with env("on"):
        assert all(_call(case) is not None for case in to_pytorch + to_kernel)


def _depthwise_offered(size, k, stride, channels_last):
    x = torch.randn(1, 8, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plan = resolve_padding(k // 2, (k, k), (stride, stride), (1, 1))
    weight = torch.randn(8, 1, k, k)
    s = (stride, stride)
    return dispatch.depthwise(x, weight, None, s, (1, 1), plan, "zeros") is not None


def test_auto_rule_for_depthwise_without_a_measurement(kernels_built):
    # PyTorch at stride > 1, on NCHW planes under 100 pixels and on channels_last 3x3 calls
    # with small outputs; the kernels otherwise (channels_last 5x5/7x7, larger NCHW planes).
    offered = _depthwise_offered
    with env("auto"):
        assert not offered(30, 3, 2, False) and not offered(30, 3, 2, True)
        assert not offered(8, 3, 1, False) and not offered(20, 3, 1, True)
        assert offered(20, 3, 1, False) and offered(20, 7, 1, True)


def test_auto_rule_for_channels_last_3x3_depthwise_follows_the_reads(kernels_built, monkeypatch):
    # channels_last 3x3 inputs of 8 MiB (1 x 8 x 512 x 512 floats) go to the kernels where
    # they touch their input first (prefetch on; from the library's kTouchBytes, which it
    # exports), to PyTorch below 16 MB where they do not.
    with env("auto"):
        for prefetch, taken in (("on", True), ("off", False)):
            monkeypatch.setenv("SEPCONV_KERNELS_PREFETCH", prefetch)
            dispatch._calls.clear()  # (each problem's decision is kept)
            assert _depthwise_offered(512, 3, 1, True) is taken
            assert not _depthwise_offered(400, 3, 1, True)  # 5 MB


def test_auto_takes_small_planes_with_a_depth_multiplier(kernels_built):
    # PyTorch's depthwise path with a multiplier is its slow generic one (docs/performance.md)
    small = _variant(spatial=(8, 8))
    with_multiplier = _variant(spatial=(8, 8), mult=2)
    with env("auto"):
        assert _call(small) is None and _call(with_multiplier) is not None
        x = torch.randn(1, 8, 8, 8).contiguous(memory_format=torch.channels_last)
        for mult, taken in ((1, False), (2, True)):
            weight = torch.randn(8 * mult, 1, 3, 3)
            plan = small.plan()
            out = dispatch.depthwise(x, weight, None, (1, 1), (1, 1), plan, "zeros")
            assert (out is not None) is taken


def test_unknown_env_value_warns_and_means_auto(kernels_built, monkeypatch):
    monkeypatch.setattr(dispatch, "_warned", set())
    with env("fast"), pytest.warns(RuntimeWarning, match="SEPCONV_KERNELS"):
        assert _call(_big_case()) is not None


def test_fallback_without_compiler_warns_once(no_compiler):
    layer = SeparableConv2d(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 40, 40)
    with env("auto"):
        with pytest.warns(RuntimeWarning, match="unavailable"):
            out = layer(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out_again = layer(x)  # no second warning
    with env("off"):
        expected = layer(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out_again, expected)


def test_channels_last_3x3_depthwise_without_compiler_falls_back(no_compiler, monkeypatch):
    # auto's rule for these reads a threshold from the library (kTouchBytes), which cannot
    # be loaded here: PyTorch's path runs, with the one warning, instead of a BuildError.
    monkeypatch.setenv("SEPCONV_KERNELS_PREFETCH", "on")
    layer = DepthwiseConv2d(8, 3, padding=1)
    x = torch.randn(1, 8, 40, 40).contiguous(memory_format=torch.channels_last)
    with env("auto"), torch.no_grad(), pytest.warns(RuntimeWarning, match="unavailable"):
        out = layer(x)
    with env("off"), torch.no_grad():
        torch.testing.assert_close(out, layer(x))


def test_env_on_without_compiler_raises(no_compiler):
    with env("on"), pytest.raises(RuntimeError, match="unavailable"):
        _call()


def test_layers_use_the_fast_path(kernels_built, count_calls):
    with env("auto"):
        SeparableConv2d(4, 6, 3, padding=1)(torch.randn(1, 4, 40, 40))
        SeparableConv1d(4, 6, 3, padding="same")(torch.randn(2, 4, 1000))
        DepthwiseConv1d(8, 4, padding="causal")(torch.randn(2, 8, 30))
    assert count_calls == {"separable": 2, "depthwise": 1}


def test_mid_layers_keep_the_pytorch_path(kernels_built, count_calls):
    layer = SeparableConv2d(4, 6, 3, padding=1, mid_act_layer="relu")
    with env("on"):
        layer(torch.randn(1, 4, 9, 9))
    assert count_calls["separable"] == 0


def test_declines_unsupported(kernels_built):
    case = _variant()
    wd, wp, bd, bp = case.weights()
    plan = case.plan()
    with env("on"):
        x = case.input()
        assert (
            dispatch.separable(
                x.half(), wd.half(), wp.half(), None, None, (1, 1), (1, 1), plan, "zeros"
            )
            is None
        )
        assert dispatch.separable(x, wd.double(), wp, bd, bp, (1, 1), (1, 1), plan, "zeros") is None
        x3 = torch.randn(1, 2, 4, 4, 4)
        w3 = torch.randn(2, 1, 3, 3, 3)
        from sepconv.functional.padding import resolve_padding

        plan3 = resolve_padding(1, (3, 3, 3), (1, 1, 1), (1, 1, 1))
        assert dispatch.depthwise(x3, w3, None, (1, 1, 1), (1, 1, 1), plan3, "zeros") is None
        # forward-mode AD
        import torch.autograd.forward_ad as fwAD

        with fwAD.dual_level():
            dual = fwAD.make_dual(x, torch.ones_like(x))
            assert dispatch.separable(dual, wd, wp, bd, bp, (1, 1), (1, 1), plan, "zeros") is None


def test_declines_while_compiling(kernels_built, monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with env("on"):
        assert _call() is None


def test_trace_and_fx_stay_standard(kernels_built):
    layer = SeparableConv2d(4, 6, 3, padding=1).eval()
    x = torch.randn(1, 4, 9, 9)
    with env("on"):
        traced = torch.jit.trace(layer, x)
        graph = str(traced.graph)
        assert "aten::_convolution" in graph
        torch.testing.assert_close(traced(x), layer(x))
        gm = torch.fx.symbolic_trace(layer)
        torch.testing.assert_close(gm(x), layer(x))


def test_inference_mode_and_no_grad(kernels_built, count_calls):
    layer = SeparableConv2d(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 9, 9)
    with env("on"):
        with torch.inference_mode():
            a = layer(x)
        with torch.no_grad():
            b = layer(x)
    torch.testing.assert_close(a, b)
    assert count_calls["separable"] == 2


def test_cli_build_and_info(kernels_built, capsys):
    from sepconv.cli import main

    assert main(["build-kernels"]) == 0
    path = capsys.readouterr().out.strip()
    assert path.endswith(".so")
    assert main(["kernels-info"]) == 0
    assert "SEPCONV_KERNELS" in capsys.readouterr().out


def test_sizes_beyond_32_bit_blas_arguments_decline():
    """The BLAS calls take 32-bit sizes (one tile's matrix sizes and leading dimensions): the
    dispatcher declines beyond them. (Offsets are 64-bit: tests/kernels/test_large.py.)"""
    big = 2**16
    g = _ops.Geometry(
        rank=2,
        N=1,
        C=1,
        M=1,
        H=big,
        W=big,
        OH=big,
        OW=big,
        KH=1,
        KW=1,
        sy=1,
        sx=1,
        dy=1,
        dx=1,
        pt=0,
        pb=0,
        pl=0,
        pr=0,
        mode="zeros",
        O=1,
        G=1,
        nhwc=False,
    )
    assert not dispatch._fits_int32(g)


def test_pooled_outputs_never_alias_live_tensors(kernels_on):
    """Outputs come from a pool, but a storage is reused only once nothing else holds it."""
    layer = SeparableConv2d(64, 64, 3, padding=1)
    x1, x2 = torch.randn(2, 64, 48, 48), torch.randn(2, 64, 48, 48)  # 1.2 MB outputs
    with torch.inference_mode():
        y1 = layer(x1)
        saved = y1.clone()
        y2 = layer(x2)
        assert y1.data_ptr() != y2.data_ptr()
        view = y2[1]
        view_saved = view.clone()
        del y2
        y3 = layer(x1)  # y2's storage is still referenced by `view`
        assert torch.equal(view, view_saved)
        assert torch.equal(y1, saved)
        ptr = y3.data_ptr()
        del y3
        y4 = layer(x2)  # y3's storage is free again
        assert y4.data_ptr() == ptr
        with env("off"):
            expected = layer(x2)
        torch.testing.assert_close(y4, expected, rtol=1e-5, atol=1e-5)


def test_declines_under_dispatch_modes(kernels_built, count_calls):
    """FLOP counters and other dispatch modes must see the standard convolutions."""
    from torch.utils.flop_counter import FlopCounterMode

    layer = SeparableConv2d(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 9, 9)
    with env("on"):
        counter = FlopCounterMode(display=False)
        with counter:
            layer(x)
        with torch.device("cpu"):
            layer(x)
    assert counter.get_total_flops() > 0
    assert count_calls["separable"] == 0


def test_autocast_gets_the_pytorch_path_and_its_dtype(kernels_built, count_calls):
    layer = SeparableConv2d(8, 16, 3, padding=1, depth_multiplier=2)
    x = torch.randn(2, 8, 64, 64)
    with env("auto"), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16 and count_calls == {"separable": 0, "depthwise": 0}


def test_pool_makes_room_for_new_sizes(kernels_on, monkeypatch):
    """Free storages of old sizes leave the pool when a new size would not fit."""
    _ops.clear_pool()
    monkeypatch.setattr(_ops, "_pool_limit", lambda: 3 << 20)
    first = _ops.pooled_empty((2 << 20,), (1,), torch.uint8)  # 2 MiB: pooled
    assert _ops._pool_bytes == 2 << 20
    held = _ops.pooled_empty((1 << 20,), (1,), torch.uint8)  # 1 MiB: pooled, kept alive
    del first  # free: may be evicted
    second = _ops.pooled_empty((3 << 19,), (1,), torch.uint8)  # 1.5 MiB: evicts the free 2 MiB
    assert _ops._pool_bytes == (1 << 20) + (3 << 19)
    assert set(_ops._pool) == {1 << 20, 3 << 19}
    again = _ops.pooled_empty((3 << 19,), (1,), torch.uint8)  # second still alive: a new one
    assert again.data_ptr() != second.data_ptr() and held.numel() == 1 << 20
    _ops.clear_pool()
