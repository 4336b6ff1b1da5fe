"""The bfloat16 separable forward (CPUs with native bfloat16) equals the NumPy reference of
what PyTorch computes in bfloat16: the depthwise output rounded to bfloat16, the pointwise
sums in float, the output rounded. Wide channel counts reach the own bfloat16 GEMM's panels
and tails (``csrc/gemm_bf16.h``: odd K, columns past a vector, several panels, groups),
NCHW and channels_last, the input widened a vector at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconv import reference
from sepconv.kernels import dispatch
from tests.kernels.helpers import Case, env, output_fits


@pytest.fixture(autouse=True)
def _native_bfloat16(kernels_built):
    if not dispatch._bf16_supported():
        pytest.skip("no native bfloat16 on this CPU")


@st.composite
def wide_cases(draw) -> Case:
    C = draw(st.integers(1, 40))
    M = draw(st.integers(1, 2))
    G = draw(st.sampled_from([g for g in (1, 2, 3) if (C * M) % g == 0 and C % g == 0]))
    O = G * draw(st.integers(1, 90))  # noqa: E741
    k = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.integers(1, 2))
    spatial = (draw(st.integers(k, 21)), draw(st.integers(k, 21)))
    layout = draw(st.sampled_from(("contiguous", "channels_last")))
    return Case(
        2, draw(st.integers(1, 2)), C, M, O, G, spatial, (k, k), (stride, stride), (1, 1),
        k // 2, "zeros", layout, draw(st.booleans()),
    )  # fmt: skip


def _bf16_rounded(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(a).to(torch.bfloat16).double().numpy()


def _check(case: Case) -> None:
    x = case.input(torch.bfloat16)
    wd, wp, bd, bp = case.weights(torch.bfloat16)

    def np64(t):
        return None if t is None else t.double().numpy()

    with env("on"):
        out = dispatch.separable(
            x, wd, wp, bd, bp, case.stride, case.dilation, case.plan(), case.mode
        )
    assert out is not None and out.dtype == torch.bfloat16
    mid = reference.depthwise_conv(np64(x), np64(wd), np64(bd), case.stride, case.padding)
    expected = reference.conv(_bf16_rounded(mid), np64(wp), np64(bp), groups=case.G)
    assert out.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    # bfloat16 output rounding (2^-9 relative) and sums in another order
    assert np.abs(out.double().numpy() - expected).max() <= 8e-3 * scale


@settings(max_examples=80, deadline=None)
@given(case=wide_cases())
def test_bfloat16_forward_matches_numpy(case):
    if output_fits(case):
        _check(case)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "channels",
    [(33, 130, 1), (64, 64, 1), (48, 96, 3), (7, 17, 1)],  # (C, O, groups)
)
def test_bfloat16_forward_shapes(channels, layout):
    c, o, groups = channels
    _check(Case(2, 2, c, 1, o, groups, (19, 23), (3, 3), (1, 1), (1, 1), 1, "zeros", layout, True))


def test_bfloat16_keeps_nan_and_inf():
    """A NaN or infinite input reaches the output as PyTorch's bfloat16 path gives it."""
    x = torch.randn(1, 20, 9, 9).bfloat16()
    x[0, 3, 4, 4] = float("nan")
    x[0, 5, 1, 1] = float("inf")
    wd = torch.rand(20, 1, 3, 3).bfloat16() + 0.1
    wp = torch.rand(40, 20, 1, 1).bfloat16() + 0.1
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        with env("on"):
            fast = dispatch.separable(xl, wd, wp, None, None, (1, 1), (1, 1), _plan(), "zeros")
        expected = torch.nn.functional.conv2d(
            torch.nn.functional.conv2d(xl, wd, padding=1, groups=20), wp
        )
        assert torch.equal(torch.isnan(fast), torch.isnan(expected))
        assert torch.equal(torch.isinf(fast), torch.isinf(expected))


def _plan():
    return Case(
        2, 1, 1, 1, 1, 1, (3, 3), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", False
    ).plan()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bfloat16_depthwise_rounds_to_nearest_even(layout):
    """The depthwise output (float sums) rounded to bfloat16 to nearest, ties to even: as the
    float64 reference rounded, but for the few sums within float rounding of a tie, never
    more than one bfloat16 step away."""
    case = Case(2, 2, 40, 1, 40, 1, (21, 19), (3, 3), (1, 1), (1, 1), 1, "zeros", layout, True)
    x = case.input(torch.bfloat16)
    wd, _, bd, _ = case.weights(torch.bfloat16)
    with env("on"):
        out = dispatch.depthwise(x, wd, bd, case.stride, case.dilation, case.plan(), "zeros")
    expected = reference.depthwise_conv(
        x.double().numpy(), wd.double().numpy(), bd.double().numpy(), 1, 1
    )
    rounded = torch.from_numpy(expected).to(torch.bfloat16)
    same = (out == rounded).double().mean().item()
    assert same >= 0.99, f"only {same:.3f} of the outputs rounded as the reference"
    step = torch.from_numpy(np.abs(expected)).to(torch.bfloat16).double() * 2.0**-7
    assert ((out.double() - rounded.double()).abs() <= step + 1e-30).all()


@pytest.mark.parametrize("width", [56, 61, 64, 113])
def test_bfloat16_stride2_wide_rows(width):
    """Stride 2 on planar rows 56 or more wide: the rows widened to float before the split."""
    _check(
        Case(2, 2, 6, 1, 20, 1, (9, width), (3, 3), (2, 2), (1, 1), 1, "zeros", "contiguous", True)
    )
