"""Gradients of the fast path: against PyTorch's, by gradcheck (float64) and double backward."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sepconv import SeparableConv2d
from sepconv.functional.conv import depthwise_forward, separable_forward
from sepconv.kernels import _build, _ops
from tests.kernels.helpers import (
    Case,
    cases,
    env,
    output_fits,
    stride1_square_cases,
    tile_gemm,
)


def _grads(fn, inputs, seed=3, gy_like_output=False):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    gy = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).to(out.dtype)
    if gy_like_output:  # the output's strides (channels_last for channels_last outputs)
        gy = torch.empty_like(out).copy_(gy)
    wanted = [t for t in leaves if t is not None]
    return out, out.grad_fn, torch.autograd.grad(out, wanted, gy)


def _compare(
    case: Case,
    dtype: torch.dtype,
    rtol: float,
    depthwise_only: bool,
    gy_like_output=False,
    frozen_pointwise=False,
    without_bp=False,
) -> None:
    x = case.input(dtype)
    wd, wp, bd, bp = case.weights(dtype)
    bp = None if without_bp else bp
    plan = case.plan()
    if depthwise_only:

        def fn(x_, wd_, bd_):
            return depthwise_forward(x_, wd_, bd_, case.stride, case.dilation, plan, case.mode)

        inputs = (x, wd, bd)
        fast_type = _ops.DepthwiseFunction
    else:

        def fn(x_, wd_, wp_, bd_, bp_):
            return separable_forward(
                x_, wd_, wp_, bd_, bp_, case.stride, case.dilation, plan, case.mode
            )

        inputs = (x, wd, wp, bd, bp)
        fast_type = _ops.SeparableFunction
        if frozen_pointwise:  # (no weight gradient: gy's sums for the biases from PyTorch)

            def fn(x_, wd_, bd_, bp_, wp_=wp):
                return separable_forward(
                    x_, wd_, wp_, bd_, bp_, case.stride, case.dilation, plan, case.mode
                )

            inputs = (x, wd, bd, bp)
    with env("on"):
        out, grad_fn, fast = _grads(fn, inputs, gy_like_output=gy_like_output)
    assert grad_fn.name() == fast_type.__name__ + "Backward", grad_fn.name()
    with env("off"):
        out0, _, slow = _grads(fn, inputs, gy_like_output=gy_like_output)
    assert (out - out0).abs().max().item() <= rtol * max(1.0, out0.abs().max().item())
    for a, b in zip(fast, slow):
        assert a.shape == b.shape
        scale = max(1.0, b.abs().max().item())
        assert (a.double() - b.double()).abs().max().item() <= rtol * scale


@settings(max_examples=25)
@given(case=cases())
def test_gradients_match_pytorch_float64(case, kernels_built):
    if not output_fits(case):
        return
    _compare(case, torch.float64, 1e-10, depthwise_only=False)
    _compare(case, torch.float64, 1e-10, depthwise_only=True)


@settings(max_examples=10)
@given(case=cases(max_size=30))
def test_gradients_match_pytorch_float32(case, kernels_built):
    _compare_float32(case)


@pytest.mark.parametrize("gemm", sorted(_build.TILE_GEMM))
@settings(max_examples=10)
@given(case=cases(max_size=30))
def test_gradients_in_every_tile_gemm_mode(gemm, case, kernels_built):
    """The backward's GEMMs: own kernel (the pointwise weight gradient on a transposed
    intermediate), MKL, or by layout."""
    with tile_gemm(gemm):
        _compare_float32(case)


@pytest.mark.parametrize("frozen, without_bp", [(True, False), (False, True), (True, True)])
@settings(max_examples=8)
@given(case=cases(max_size=20))
def test_bias_gradients_of_either_bias(frozen, without_bp, case, kernels_built):
    """The output gradient's sums serve the pointwise bias's gradient and the depthwise
    bias's share of the pointwise weight's: summed by the kernel with the weight's gradient,
    by PyTorch without it (a frozen weight), and with either bias alone."""
    case = replace(case, bias=True)
    if output_fits(case):
        _compare(case, torch.float32, 1e-4, False, frozen_pointwise=frozen, without_bp=without_bp)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("gemm", sorted(_build.TILE_GEMM))
@settings(max_examples=8)
@given(case=cases(max_size=20, rank=2), outputs=st.integers(64, 100))
def test_gradients_of_wide_pointwise_layers(layout, gemm, case, outputs, kernels_built):
    """64 or more outputs a group, output gradient in the output's layout: the pointwise
    weight gradient through the own GEMM on the transposed intermediate (planar and
    channels_last)."""
    case = replace(case, O=case.G * outputs, layout=layout)
    if output_fits(case):
        with tile_gemm(gemm):
            _compare(case, torch.float32, 1e-4, depthwise_only=False, gy_like_output=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@settings(max_examples=8, deadline=None)
@given(
    case=cases(max_size=8, rank=2),
    outputs=st.integers(64, 80),
    size=st.tuples(st.integers(24, 48), st.integers(17, 48)),
)
def test_gradients_of_pointwise_weight_bands(layout, case, outputs, size, kernels_built):
    """Output planes of more than 512 pixels (at stride 1): the own GEMM's pointwise weight
    gradient goes by bands of output rows, each band's intermediate recomputed from its own
    input rows."""
    case = replace(case, O=case.G * outputs, layout=layout, spatial=size)
    if output_fits(case):
        with tile_gemm("own"):
            _compare(case, torch.float32, 1e-4, depthwise_only=False, gy_like_output=True)


@pytest.mark.parametrize("depthwise_only", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@settings(max_examples=12, deadline=None)
@given(case=cases(max_size=40, rank=2))
def test_an_inf_in_the_input_reaches_only_the_gradients_of_its_windows(
    layout, depthwise_only, case, kernels_built
):
    """Inf in the input's first column and in its rows and columns that no window reaches
    (valid padding): the gradients equal PyTorch's, Inf and NaN exactly where PyTorch's
    are. (The weight gradient's last partial vector of a row reads the input masked: its
    lanes past the output would read the next row's first columns, and a zero gradient
    lane times Inf is NaN.)"""
    case = replace(case, padding="valid", mode="zeros", layout=layout)
    assume(output_fits(case))
    reached = [
        (n - (k - 1) * d - 1) // s * s + (k - 1) * d + 1
        for n, k, s, d in zip(case.spatial, case.kernel, case.stride, case.dilation)
    ]
    x = case.input()
    x[..., :, 0] = float("inf")
    x[..., reached[0] :, :] = float("inf")
    x[..., :, reached[1] :] = float("inf")
    wd, wp, bd, bp = case.weights()
    plan = case.plan()

    def fn(x_, wd_, bd_, wp_=None, bp_=None):
        if depthwise_only:
            return depthwise_forward(x_, wd_, bd_, case.stride, case.dilation, plan, "zeros")
        return separable_forward(x_, wd_, wp_, bd_, bp_, case.stride, case.dilation, plan, "zeros")

    inputs = (x, wd, bd) if depthwise_only else (x, wd, bd, wp, bp)
    with env("on"):
        _, _, fast = _grads(fn, inputs, gy_like_output=True)
    with env("off"):
        _, _, slow = _grads(fn, inputs, gy_like_output=True)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(
            a,
            b,
            rtol=1e-4,
            atol=1e-4 * max(1.0, b.nan_to_num(0, 0, 0).abs().max().item()),
            equal_nan=True,
        )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@settings(max_examples=8, deadline=None)
@given(
    case=cases(max_size=16, rank=2), outputs=st.integers(257, 320), channels=st.integers(90, 200)
)
def test_gradients_of_wide_layers(layout, case, outputs, channels, kernels_built):
    """More than 256 outputs a group and 90-600 intermediate channels, own tile GEMMs: the
    GEMMs' K in several blocks where they have 64 or more columns (outputs for the
    intermediate's gradient; pixels, 18 x 18 or more, for the pointwise weight's)."""
    spatial = tuple(max(s, 18) for s in case.spatial)
    case = replace(case, C=channels, G=1, O=outputs, layout=layout, spatial=spatial)
    if output_fits(case):
        with tile_gemm("own"):
            _compare(case, torch.float32, 1e-4, depthwise_only=False, gy_like_output=True)


@settings(max_examples=15)
@given(case=cases(max_size=90, rank=1))
def test_gradients_of_wide_rows_float32(case, kernels_built):
    # 1d rows up to 90 wide (also strided and dilated): several vectors and a partial one
    # per row in the general weight-gradient loop and the strided fold.
    _compare_float32(case)


def _compare_float32(case: Case) -> None:
    if not output_fits(case):
        return
    _compare(case, torch.float32, 1e-4, depthwise_only=False)
    _compare(case, torch.float32, 1e-4, depthwise_only=True)


@settings(max_examples=15)
@given(case=stride1_square_cases(max_size=48))
def test_gradients_of_the_row_blocked_path(case, kernels_built):
    # float32: the row-blocked loops (forward recompute, weight gradient, input gradient as a
    # convolution of the output gradient) are float32 ones; float64 keeps the general loops.
    # Sizes up to 48: rows of one, two and three vectors, full and partial.
    _compare_float32(case)


@settings(max_examples=15)
@given(case=stride1_square_cases(max_size=70, direct=True))
def test_gradients_of_the_direct_paths(case, kernels_built):
    # Zero padding, one filter per channel: the input gradient is the convolution of the
    # output gradient with the flipped filter (planar: masked edge columns and zero rows;
    # channels_last: a zero-padded copy), rows up to five vectors wide.
    _compare_float32(case)


@settings(max_examples=10)
@given(
    case=stride1_square_cases(max_size=70, direct=True), channels=st.sampled_from((16, 32, 64, 128))
)
def test_gradients_of_channels_last_vector_blocks(case, channels, kernels_built):
    # channels_last blocks of whole channel vectors take the row-by-row weight gradient; with
    # 128 channels the output gradient's padded copy is in blocks of one channel vector.
    _compare_float32(replace(case, C=channels, layout="channels_last"))


GRADCHECK_CASES = [
    Case(2, 2, 3, 2, 4, 2, (5, 6), (3, 2), (2, 1), (1, 2), "same", "reflect", "contiguous", True),
    Case(2, 1, 2, 1, 3, 1, (6, 5), (3, 3), (1, 1), (1, 1), 1, "circular", "channels_last", True),
    Case(1, 2, 3, 1, 2, 1, (9,), (4,), (1,), (1,), "causal", "zeros", "contiguous", True),
    Case(1, 1, 2, 2, 2, 1, (8,), (3,), (2,), (1,), 2, "replicate", "channels_last", False),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: f"{c.rank}d-{c.mode}-{c.layout}")
def test_gradcheck(case, kernels_on):
    x = case.input(torch.float64).requires_grad_(True)
    wd, wp, bd, bp = (
        None if t is None else t.requires_grad_(True) for t in case.weights(torch.float64)
    )
    plan = case.plan()

    def sep(*args):
        return separable_forward(*args, case.stride, case.dilation, plan, case.mode)

    def dw(x_, wd_, bd_):
        return depthwise_forward(x_, wd_, bd_, case.stride, case.dilation, plan, case.mode)

    assert torch.autograd.gradcheck(sep, (x, wd, wp, bd, bp))
    assert torch.autograd.gradcheck(dw, (x, wd, bd))


@pytest.mark.parametrize(
    "case", GRADCHECK_CASES[1:], ids=lambda c: f"{c.rank}d-{c.mode}-{c.layout}"
)
def test_double_backward_through_the_kernels(case, kernels_on, monkeypatch):
    x = case.input(torch.float64).requires_grad_(True)
    wd, wp, bd, bp = (
        None if t is None else t.requires_grad_(True) for t in case.weights(torch.float64)
    )
    plan = case.plan()
    calls = []
    for name in ("SeparableFunction", "DepthwiseFunction"):
        original = getattr(_ops, name).apply
        monkeypatch.setattr(
            getattr(_ops, name),
            "apply",
            lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a),
        )

    def sep(*args):
        return separable_forward(*args, case.stride, case.dilation, plan, case.mode)

    def dw(x_, wd_, bd_):
        return depthwise_forward(x_, wd_, bd_, case.stride, case.dilation, plan, case.mode)

    weights = [t for t in (wd, wp, bd, bp)]
    assert torch.autograd.gradgradcheck(sep, (x, *weights))
    assert torch.autograd.gradgradcheck(dw, (x, wd, bd))
    assert "SeparableFunction" in calls and "DepthwiseFunction" in calls

    # A gradient penalty (R1 / WGAN-GP style) equals the PyTorch path's.
    def penalty_grads():
        (gx,) = torch.autograd.grad(sep(x, *weights).square().sum(), x, create_graph=True)
        params = [t for t in weights if t is not None]
        return torch.autograd.grad(gx.square().sum(), params)

    fast = penalty_grads()
    with env("off"):
        reference = penalty_grads()
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_only_the_input_is_saved(kernels_on):
    """The fused layer keeps its input (and weights) for backward, not the intermediate."""
    from sepconv import SeparableConv2d

    layer = SeparableConv2d(16, 32, 3, padding=1)
    x = torch.randn(2, 16, 24, 24, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    params = sum(p.numel() for p in layer.parameters())
    assert sum(saved) <= x.numel() + params
    with env("off"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        layer(x).sum().backward()
    assert sum(saved) >= x.numel() + 16 * 24 * 24 * 2  # PyTorch keeps the intermediate


def test_input_without_grad(kernels_on):
    """First layer of a network: only weight gradients are needed."""
    case = Case(2, 2, 8, 1, 8, 1, (12, 12), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True)
    x = case.input()
    wd, wp, bd, bp = (t.requires_grad_(True) for t in case.weights())
    plan = case.plan()
    out = separable_forward(x, wd, wp, bd, bp, case.stride, case.dilation, plan, "zeros")
    assert out.grad_fn.name() == "SeparableFunctionBackward"
    grads = torch.autograd.grad(out.square().sum(), (wd, wp, bd, bp))
    with env("off"):
        out0 = separable_forward(x, wd, wp, bd, bp, case.stride, case.dilation, plan, "zeros")
        grads0 = torch.autograd.grad(out0.square().sum(), (wd, wp, bd, bp))
    for a, b in zip(grads, grads0):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_bfloat16_with_grad_declines(kernels_on):
    from sepconv.kernels import dispatch

    case = Case(2, 1, 4, 1, 4, 1, (8, 8), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", False)
    x = case.input(torch.bfloat16).requires_grad_(True)
    wd, wp, _, _ = case.weights(torch.bfloat16)
    assert dispatch.separable(x, wd, wp, None, None, (1, 1), (1, 1), case.plan(), "zeros") is None


_REPEATED_BACKWARD = """
import ctypes, resource, torch
from sepconv import kernels
from sepconv.kernels import _build, _ops
lib = _build.load()
x, gy = torch.randn(2, 64, 56, 56), torch.randn(2, 64, 56, 56)
wd, wp = torch.randn(64, 1, 3, 3), torch.randn(64, 64, 1, 1)
g = _ops.geometry(x, (3, 3), 64, (1, 1), (1, 1), (1, 1, 1, 1), "zeros", 64, 1)
gx, gwd, gbd, gwp = torch.zeros_like(x), torch.zeros(64 * 9), torch.zeros(64), torch.zeros(64 * 64)
gbp = torch.zeros(64)
geo = _ops._geo_array(g, _ops.strides4(x, 2), (0, 0, 0, 0))
strides = [(ctypes.c_int64 * 4)(*_ops.strides4(t, 2)) for t in (gy, gx)]
pointers = [t.data_ptr() for t in (x, wd, wp, gy, gx, gwd, gbd, gwp, gbp)]
def call():
    assert lib.sepconv_backward(0, *pointers[:4], strides[0], pointers[4], strides[1],
                                *pointers[5:], geo, 0) == 0
def resident():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    call()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
grads = [t.clone() for t in (gx, gwd, gbd, gwp, gbp)]
kept = resident()
kernels.release_memory()
freed = kept - resident()
call()  # allocates its buffers afresh
# (the weight gradients' per-thread sums depend on which thread ran which block)
assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-4) for a, b in zip(grads, (gx, gwd, gbd, gwp, gbp)))
assert torch.allclose(gbp, gy.sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-4)
print(faults, freed)
"""


def test_backward_buffers_are_kept_between_calls_and_released_on_request(kernels_built):
    # Its per-thread buffers (about 1.7 MB a thread here) are kept from call to call
    # (kept.h). With every allocation of 64 KiB or more mapped afresh (glibc's
    # MALLOC_MMAP_THRESHOLD_), buffers allocated per call would page-fault on every call,
    # about 400 faults a thread; sepconv.kernels.release_memory() unmaps them.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    run = subprocess.run(
        [sys.executable, "-c", _REPEATED_BACKWARD], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    faults, freed = map(float, run.stdout.split())
    assert faults < 50, f"{faults} page faults a call"
    assert freed >= 1 << 20, f"release_memory freed {freed} bytes"


def test_gradients_repeat_exactly_with_deterministic_algorithms(kernels_on):
    # With dynamic scheduling the weight gradients' per-thread sums depend on which thread
    # ran which block (half of such calls differed in rounding); under
    # torch.use_deterministic_algorithms(True) the tasks go to the threads statically.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    try:
        layer = SeparableConv2d(64, 64, 3, padding=1)
        x = torch.randn(2, 64, 56, 56, requires_grad=True)
        gy = torch.randn(2, 64, 56, 56)
        first = None
        for _ in range(20):
            layer.zero_grad()
            x.grad = None
            layer(x).backward(gy)
            grads = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
            first = first or grads
            assert all(torch.equal(a, b) for a, b in zip(first, grads))
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
