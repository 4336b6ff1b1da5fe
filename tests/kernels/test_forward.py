"""The fast forward equals the PyTorch path and the NumPy reference (float32, 1e-5 relative)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from sepconv import reference
from sepconv.functional.conv import depthwise_forward, separable_forward
from sepconv.kernels import _build, dispatch
from tests.conftest import assert_close_to_reference
from tests.kernels.helpers import (
    Case,
    cases,
    env,
    inner_pixel_cases,
    numpy_separable,
    output_fits,
    prefetch,
    stride1_square_cases,
    stride2_direct_cases,
    tile_gemm,
)
from tests.kernels.helpers import threads as thread_count

RTOL = 1e-5


def _np(t):
    return None if t is None else t.detach().double().numpy()


def _torch_path(fn, *args):
    old = os.environ.get("SEPCONV_KERNELS")
    os.environ["SEPCONV_KERNELS"] = "off"
    try:
        return fn(*args)
    finally:
        if old is None:
            del os.environ["SEPCONV_KERNELS"]
        else:
            os.environ["SEPCONV_KERNELS"] = old


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Two float32 results that each may sit ``RTOL`` of the magnitude from the exact value
    (the kernels' and PyTorch's: :func:`_agrees_with_pytorch`), so within twice that of each
    other."""
    assert actual.shape == expected.shape
    scale = max(1.0, expected.abs().max().item())
    assert (actual.double() - expected.double()).abs().max().item() <= 2 * RTOL * scale


def _agrees_with_pytorch(fast: torch.Tensor, pytorch: torch.Tensor, exact: np.ndarray) -> None:
    """``fast`` equals the PyTorch path's float32 result within ``RTOL`` plus that result's
    own distance from the float64 reference ``exact``: each float32 result may sit 1e-5 on
    either side of it (1x64x7x7 -> 1 7x7: the kernel 3.2e-6 off, PyTorch 7.1e-6 on the other
    side; 1.03e-5 apart)."""
    assert fast.shape == pytorch.shape
    scale = max(1.0, float(np.abs(exact).max(initial=0.0)))
    slack = float(np.abs(pytorch.double().numpy() - exact).max(initial=0.0))
    assert (fast.double() - pytorch.double()).abs().max().item() <= RTOL * scale + slack


def check_separable(case: Case) -> None:
    x = case.input()
    wd, wp, bd, bp = case.weights()
    plan = case.plan()
    args = (x, wd, wp, bd, bp, case.stride, case.dilation, plan, case.mode)
    fast = dispatch.separable(*args)
    if not output_fits(case):
        assert fast is None
        return
    assert fast is not None, case
    exact = numpy_separable(case, x, (wd, wp, bd, bp))
    assert_close_to_reference(fast, exact, rtol=RTOL)
    _agrees_with_pytorch(fast, _torch_path(separable_forward, *args), exact)


def check_depthwise(case: Case) -> None:
    x = case.input()
    wd, _, bd, _ = case.weights()
    plan = case.plan()
    args = (x, wd, bd, case.stride, case.dilation, plan, case.mode)
    fast = dispatch.depthwise(*args)
    if not output_fits(case):
        assert fast is None
        return
    assert fast is not None, case
    exact = reference.depthwise_conv(
        _np(x), _np(wd), _np(bd), case.stride, case.padding, case.dilation, case.mode
    )
    assert_close_to_reference(fast, exact, rtol=RTOL)
    _agrees_with_pytorch(fast, _torch_path(depthwise_forward, *args), exact)


@given(case=cases())
def test_separable_forward_matches(case, kernels_built):
    with env("on"):
        check_separable(case)


@given(case=cases())
def test_depthwise_forward_matches(case, kernels_built):
    with env("on"):
        check_depthwise(case)


@settings(max_examples=10)
@given(case=cases(max_size=40, rank=2))
def test_larger_planes(case, kernels_built):
    """Planes larger than one vector, so full and partial vectors and several tiles run."""
    with env("on"):
        check_separable(case)
        check_depthwise(case)


@settings(max_examples=40)
@given(case=stride1_square_cases())
def test_row_blocked_stride1_path(case, kernels_built):
    """Square 3/5/7 kernels at stride 1 take the row-blocked depthwise loop."""
    with env("on"):
        check_separable(case)
        check_depthwise(case)


@settings(max_examples=15)
@given(case=stride1_square_cases(max_size=70, direct=True))
def test_direct_paths(case, kernels_built):
    """Zero-padded contiguous planes: the depthwise and the fused forward read them straight
    from the input (masked edge columns, zero rows), rows up to five vectors wide."""
    with env("on"):
        check_separable(case)
        check_depthwise(case)


@settings(max_examples=40)
@given(case=stride2_direct_cases())
def test_direct_stride2_path(case, kernels_built):
    """Zero-padded contiguous planes at stride 2, 3x3: read straight from the input (masked
    loads past either edge of a row, zero rows above and below)."""
    with env("on"):
        check_separable(case)
        check_depthwise(case)


def test_direct_stride2_row_pieces(kernels_on):
    """Rows wider than a depthwise tile (4096 outputs) in pieces: a piece's first column."""
    case = Case(2, 1, 2, 1, 3, 1, (5, 8300), (3, 3), (2, 2), (1, 1), 1, "zeros", "contiguous", True)
    check_depthwise(case)


@settings(max_examples=12)
@given(
    case=stride1_square_cases(max_size=30),
    channels=st.sampled_from((128, 256)),
    multiplier=st.sampled_from((1, 2)),
)
def test_channels_last_channel_blocks(case, channels, multiplier, kernels_built):
    """channels_last pixels a multiple of 512 bytes apart: the padded window is copied in
    blocks of one channel vector (every padding mode, depth multipliers, row tails)."""
    case = replace(case, C=channels // multiplier, M=multiplier, layout="channels_last")
    with env("on"):
        check_separable(case)
        check_depthwise(case)


@settings(max_examples=30)
@given(
    N=st.integers(1, 3),
    channels=st.sampled_from((128, 256, 384)),
    height=st.integers(1, 40),
    width=st.integers(1, 90),
    kernel=st.tuples(st.integers(1, 8), st.sampled_from((5, 7))),
    row_stride=st.integers(1, 3),
    row_dilation=st.integers(1, 2),
    mode=st.sampled_from(("zeros", "reflect", "replicate", "circular")),
    bias=st.booleans(),
)
def test_channels_last_ring_of_rows(
    N, channels, height, width, kernel, row_stride, row_dilation, mode, bias, kernels_built
):
    """The channels_last depthwise of 5- and 7-wide filters (nhwc_ring.h): rows copied once
    into a ring, two output rows a step (odd row counts), row strides and dilations, bands
    of rows (batch 1), pieces of columns (wide rows: the ring holds about 192 KiB) and channel
    groups (384)."""
    KH, KW = kernel
    height = max(height, (KH - 1) * row_dilation + 1)  # (reflect needs padding < size)
    width = max(width, KW)
    case = Case(
        rank=2,
        N=N,
        C=channels,
        M=1,
        O=8,
        G=1,
        spatial=(height, width),
        kernel=kernel,
        stride=(row_stride, 1),
        dilation=(row_dilation, 1),
        padding=(KH // 2 * row_dilation, KW // 2),
        mode=mode,
        layout="channels_last",
        bias=bias,
    )
    with env("on"):
        check_depthwise(case)


@settings(max_examples=25)
@given(case=inner_pixel_cases())
def test_channels_last_inner_pixels(case, kernels_built):
    """channels_last inner pixels read straight from the input, border strips through the
    padded copy."""
    with env("on"):
        check_separable(case)
        check_depthwise(case)


# Depthwise outputs of 16 MiB or more, which the kernels store around the caches (from the
# loops where every row starts on a line, or through a staging buffer and whole-line stores
# where a vector is half a line), and plainly otherwise: rows whose starts are not
# line-aligned, depth multipliers, channel counts that are not a multiple of the vector,
# strides, both layouts.
LARGE_OUTPUT_CASES = (
    # rows of whole lines (128 and 96 columns, 64 channels), streamed from the loops
    Case(2, 2, 64, 2, 8, 1, (130, 128), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    Case(
        2, 6, 32, 2, 8, 1, (130, 96), (3, 5), (1, 1), (1, 1), "same", "reflect", "contiguous", False
    ),
    Case(2, 4, 64, 1, 8, 1, (130, 130), (3, 3), (1, 1), (1, 1), 1, "zeros", "channels_last", True),
    Case(2, 2, 33, 2, 8, 1, (251, 253), (3, 3), (1, 1), (1, 1), 1, "reflect", "contiguous", True),
    Case(2, 1, 40, 3, 8, 1, (300, 301), (5, 5), (1, 2), (1, 1), 2, "zeros", "contiguous", False),
    Case(2, 2, 48, 1, 8, 1, (220, 203), (7, 7), (1, 1), (1, 1), 3, "zeros", "channels_last", True),
    Case(
        2,
        2,
        20,
        2,
        8,
        1,
        (230, 231),
        (3, 3),
        (1, 1),
        (1, 1),
        1,
        "replicate",
        "channels_last",
        False,
    ),
    # 36 channels: a channel tail past the last whole vector
    Case(2, 2, 18, 2, 8, 1, (240, 245), (3, 3), (1, 1), (1, 1), 1, "zeros", "channels_last", True),
    # the ring of rows (nhwc_ring.h): staged output rows two at a time, an odd row count,
    # pieces of columns that are not line-aligned, two channel groups; 3x3 on inputs of
    # 24 MiB or more, at row stride 2 as well
    Case(2, 1, 128, 1, 8, 1, (191, 193), (7, 7), (1, 1), (1, 1), 3, "zeros", "channels_last", True),
    Case(
        2, 2, 128, 1, 8, 1, (181, 183), (3, 3), (1, 1), (1, 1), 1, "reflect", "channels_last", True
    ),
    Case(2, 3, 256, 1, 8, 1, (97, 91), (3, 3), (2, 1), (1, 1), 1, "zeros", "channels_last", True),
    Case(
        2, 2, 384, 1, 8, 1, (67, 101), (5, 5), (1, 1), (1, 1), 2, "reflect", "channels_last", False
    ),
)


@pytest.mark.parametrize("case", LARGE_OUTPUT_CASES)
def test_large_depthwise_outputs(case, kernels_on):
    check_depthwise(case)


# Output rows in pieces (a row of 256 channels is more than the tile budget): pieces that
# start and end inside the image, around the inner columns.
ROW_PIECE_CASES = (
    Case(2, 1, 256, 1, 8, 1, (4, 300), (3, 3), (1, 1), (1, 1), 1, "reflect", "channels_last", True),
    Case(
        2, 1, 64, 1, 8, 1, (5, 900), (5, 3), (1, 2), (1, 1), "same", "zeros", "channels_last", False
    ),
)


# A whole call's intermediate (at most 4 MiB) beside a pointwise weight of 1 MiB or more, or
# channels_last outputs of at most 7x7: the depthwise of every image first, then one GEMM per
# block of outputs or share of pixels (channels_last and NCHW; zero padding read in place or
# any padding copied; depth multipliers, dilation, strides).
_WHOLE = (
    # (N, C, M, O), spatial, kernel, stride, dilation, padding, mode, bias
    ((2, 256, 1, 1024), (9, 9), (3, 3), (1, 1), (1, 1), 1, "zeros", True),
    ((3, 256, 1, 1100), (8, 7), (5, 5), (2, 1), (1, 1), "same", "reflect", False),
    ((1, 128, 2, 1040), (6, 6), (3, 3), (1, 1), (2, 2), 2, "replicate", True),
    # batch 1, planar, weight panels: planes of more than a panel's 64 pixels put into them
    # in pieces (a plane of at most 64 is a panel's row: the case above)
    ((1, 96, 2, 600), (11, 13), (3, 3), (1, 1), (1, 1), 1, "zeros", True),
    # channels_last 7x7 outputs: small weights too, GEMMs over shares of the pixels
    ((7, 64, 1, 40), (7, 7), (3, 3), (1, 1), (1, 1), 1, "zeros", True),
    ((6, 32, 2, 24), (13, 14), (3, 3), (2, 2), (1, 1), "same", "reflect", False),
    # own GEMM: channels_last through the planar GEMM (few pixels, a large weight), tasks
    # of 64 output channels (the last block partial) x a share of the pixels, and pixel
    # shares over several weight panels
    ((2, 320, 1, 1100), (5, 5), (3, 3), (1, 1), (1, 1), 1, "zeros", True),
    # a 1 MiB weight, channels_last packed in panels (transposes would move 2.8x as much)
    ((2, 256, 1, 1024), (12, 12), (3, 3), (1, 1), (1, 1), 1, "zeros", True),
    ((1, 256, 1, 300), (7, 7), (3, 3), (1, 1), (1, 1), 1, "reflect", False),
    ((4, 64, 1, 75), (7, 7), (3, 3), (1, 1), (1, 1), 1, "zeros", True),
    ((8, 32, 1, 130), (7, 7), (3, 3), (1, 1), (1, 1), 1, "zeros", True),
)
WHOLE_CALL_CASES = tuple(
    Case(2, *counts, 1, size, kernel, stride, dilation, padding, mode, layout, bias)
    for counts, size, kernel, stride, dilation, padding, mode, bias in _WHOLE
    for layout in ("channels_last", "contiguous", "strided")
)


@pytest.mark.parametrize("case", WHOLE_CALL_CASES)
def test_whole_call_intermediate(case, kernels_on):
    for gemm in GEMMS:
        with tile_gemm(gemm):
            check_separable(case)


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(2, 4),
    size=st.tuples(st.integers(9, 14), st.integers(8, 15)),
    mult=st.integers(1, 2),
    out_channels=st.integers(1030, 1100),
)
def test_whole_call_images_round_as_at_batch_1(batch, size, mult, out_channels, kernels_built):
    """Planar whole calls (a 1 MiB weight, planes of more than 64 pixels) run every image's
    GEMM straight into its output planes, one image after another under each block of the
    weight: each image equals its own batch-1 call bitwise (same blocks, same sums; the bias
    starts each sum in both)."""
    case = Case(
        2,
        batch,
        256,
        mult,
        out_channels,
        1,
        size,
        (3, 3),
        (1, 1),
        (1, 1),
        1,
        "zeros",
        "contiguous",
        True,  # (with a bias only: it starts each sum at batch 1)
    )
    x = case.input()
    wd, wp, bd, bp = case.weights()
    rest = (wd, wp, bd, bp, case.stride, case.dilation, case.plan(), case.mode)
    with env("on"), tile_gemm("own"):
        whole = dispatch.separable(x, *rest)
        singles = [dispatch.separable(x[n : n + 1], *rest) for n in range(batch)]
    assert torch.equal(whole, torch.cat(singles))
    assert_close_to_reference(whole, numpy_separable(case, x, (wd, wp, bd, bp)), rtol=RTOL)


@settings(max_examples=60, deadline=None)
@given(
    kernel=st.sampled_from([3, 5, 7]),
    size=st.tuples(st.integers(1, 40), st.integers(1, 70)),
    padding=st.integers(0, 3),
    counts=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 2)),
    bias=st.booleans(),
)
def test_stride_two_planes_read_in_place(kernel, size, padding, counts, bias, kernels_built):
    """Planar stride-2 depthwise read straight from the planes (3x3, and 5x5 / 7x7 with
    AVX-512): rows and columns outside the plane (masked loads, skipped rows), planes narrower
    than a vector and wider than two, blocks of rows, depth multipliers."""
    assume(min(size) + 2 * padding >= kernel)
    n, c, m = counts
    case = Case(
        2, n, c, m, 4, 1, size, (kernel,) * 2, (2, 2), (1, 1), padding, "zeros", "contiguous", bias
    )
    with env("on"):
        check_depthwise(case)
        check_separable(case)


# Channels_last 7x7 filters whose pixels are a multiple of 256 bytes (64, 192, 320 float
# channels; 32 x 2): read from the channel-blocked copy (and the ring of rows, nhwc_ring.h).
BLOCKED_7X7_CASES = (
    Case(2, 2, 64, 1, 8, 1, (9, 11), (7, 7), (1, 1), (1, 1), 3, "zeros", "channels_last", True),
    Case(
        2, 1, 192, 1, 24, 1, (40, 37), (7, 7), (1, 1), (1, 1), 3, "reflect", "channels_last", False
    ),
    Case(2, 2, 320, 1, 16, 1, (7, 7), (7, 7), (1, 1), (1, 1), 3, "zeros", "channels_last", True),
    Case(
        2, 1, 32, 2, 8, 1, (15, 14), (7, 7), (1, 1), (1, 1), "same", "zeros", "channels_last", True
    ),
)


@pytest.mark.parametrize("case", BLOCKED_7X7_CASES)
def test_channels_last_7x7_blocked(case, kernels_on):
    check_separable(case)
    check_depthwise(case)


def test_channels_last_row_pieces(kernels_on):
    for case in ROW_PIECE_CASES:
        check_separable(case)
        check_depthwise(case)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_output_layout_follows_pytorch(layout, kernels_on):
    case = Case(2, 2, 8, 1, 16, 1, (20, 20), (3, 3), (1, 1), (1, 1), 1, "zeros", layout, True)
    x = case.input()
    wd, wp, bd, bp = case.weights()
    out = dispatch.separable(x, wd, wp, bd, bp, case.stride, case.dilation, case.plan(), "zeros")
    ref = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, wd, bd, 1, 1, 1, 8), wp, bp)
    assert out.is_contiguous() == ref.is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(
        memory_format=torch.channels_last
    )


MANY_TILE_CASES = (
    # planar: an image's intermediate beyond 1 MiB, so tiles are rows of an image
    Case(
        2,
        3,
        64,
        1,
        48,
        1,
        (75, 81),
        (3, 3),
        (1, 1),
        (1, 1),
        "same",
        "zeros",
        "contiguous",
        True,
    ),
    Case(
        2,
        3,
        64,
        1,
        48,
        1,
        (37, 45),
        (5, 5),
        (2, 2),
        (1, 1),
        "same",
        "reflect",
        "channels_last",
        True,
    ),
    Case(1, 2, 96, 1, 32, 1, (3000,), (4,), (1,), (1,), "causal", "zeros", "contiguous", True),
    # strided planar: whole images of 1-4 MiB of intermediate per tile (6 images: enough
    # tiles for the threads), odd sizes, padding on one side
    Case(
        2, 6, 64, 1, 8, 1, (131, 133), (3, 3), (2, 2), (1, 1), "same", "zeros", "contiguous", True
    ),
    Case(2, 6, 32, 2, 5, 1, (131, 127), (3, 5), (2, 1), (1, 2), 2, "reflect", "contiguous", False),
    # several 64-channel task blocks and weight panels per pointwise group, channels_last
    Case(2, 2, 32, 1, 160, 2, (9, 9), (3, 3), (1, 1), (1, 1), 1, "zeros", "channels_last", True),
    Case(2, 1, 48, 2, 200, 1, (7, 7), (3, 3), (1, 1), (1, 1), 1, "reflect", "channels_last", True),
    Case(
        1,
        2,
        96,
        2,
        32,
        2,
        (3001,),
        (3,),
        (2,),
        (2,),
        "same",
        "circular",
        "channels_last",
        False,
    ),
)

# Planes at most 16 columns wide (one vector per row): rows exactly 16 wide, where lanes
# past the row are not zero from the load; asymmetric padding; tall planes cut into tiles of
# rows (an image's intermediate beyond 1 MiB).
NARROW_CASES = (
    Case(2, 2, 16, 1, 8, 1, (16, 16), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    Case(2, 1, 8, 2, 24, 1, (9, 16), (5, 5), (1, 1), (1, 1), 2, "zeros", "strided", False),
    Case(2, 1, 16, 1, 8, 1, (7, 12), (7, 7), (1, 1), (1, 1), "same", "zeros", "contiguous", True),
    Case(2, 1, 24, 1, 8, 1, (1200, 13), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
)


@pytest.mark.parametrize("case", NARROW_CASES)
def test_narrow_planes(case, kernels_on):
    check_separable(case)
    check_depthwise(case)


@settings(max_examples=30)
@given(case=stride1_square_cases(max_size=9, direct=True))
def test_narrow_planes_within_half_a_vector(case, kernels_built):
    """Planes up to 9 wide, 3/5/7 kernels, paddings 0, 1, k // 2 and k - 1: without AVX-512
    rows at most 7 wide are one vector whose lane 7 stays zero, and every shift of a lane
    outside the row must read that lane (5x5 and 7x7 reach two and three lanes past either
    side); 8 and 9 wide ones must not take that path."""
    with env("on"):
        check_separable(case)
        check_depthwise(case)


@pytest.mark.parametrize(("k", "stride"), [(3, 1), (5, 1), (7, 1), (3, 2)])
def test_direct_paths_on_every_width(k, stride, kernels_on):
    """Every width from 1 to 40, paddings 0 to k - 1 ("same" too): the edge columns and the
    in-place column range (stride 1), the masked and unmasked stride-2 blocks (3x3 only),
    planes narrower than the filter. A fixed sweep: hypothesis draws few of the widths where
    one column decides between two paths."""
    paddings = [*sorted({0, 1, k // 2, k - 1}), (0, k - 1), "same"]
    for width in range(1, 41):
        for padding in paddings:
            case = Case(2, 1, 2, 1, 3, 1, (k + 2, width), (k, k), (stride, stride), (1, 1),
                        padding, "zeros", "contiguous", True)  # fmt: skip
            left, right = case.plan().amounts(case.spatial)[:2]  # (F.pad order: width first)
            if width + left + right < k:
                continue  # no output column
            check_depthwise(case)


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(9, 16),
    height=st.integers(1, 20),
    k=st.sampled_from([3, 5, 7]),
    batch=st.integers(1, 2),
    multiplier=st.integers(1, 2),
    bias=st.booleans(),
    count=st.sampled_from([1, 2]),
)
@example(width=16, height=14, k=3, batch=1, multiplier=1, bias=True, count=2)  # (16 columns)
@example(width=14, height=14, k=7, batch=2, multiplier=2, bias=False, count=1)
def test_planes_of_two_vectors(width, height, k, batch, multiplier, bias, count, kernels_built):
    """Planes 9-16 columns wide with a centred filter: without AVX-512 two vectors a row
    (conv_pair_s1: column windows across the two, zeros past the row, a second vector of
    1-8 columns stored); output rows in blocks of 4, 2 and 1, rows outside the plane skipped."""
    case = Case(2, batch, 3, multiplier, 5, 1, (height, width), (k, k), (1, 1), (1, 1),
                k // 2, "zeros", "contiguous", bias)  # fmt: skip
    with env("on"), thread_count(count):
        check_separable(case)
        check_depthwise(case)


# Few tiles for two threads (batch 1, small planes): where the pointwise weight is at most
# twice the intermediate, each thread computes one band of output rows (planar and
# channels_last, groups, depth multipliers, strides, any padding); else the threads share each
# tile (channels_last, and planar with pointwise groups: the last three), or the whole call's
# intermediate comes first (the first, planar, and the fourth, channels_last 7 x 7).
FEW_TILE_CASES = (
    Case(2, 1, 64, 1, 160, 1, (7, 7), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    Case(2, 1, 64, 1, 160, 2, (7, 7), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    Case(2, 1, 48, 2, 40, 1, (13, 11), (5, 3), (2, 1), (1, 2), "same", "circular", "strided", True),
    Case(2, 1, 64, 1, 160, 1, (7, 7), (3, 3), (1, 1), (1, 1), 1, "zeros", "channels_last", True),
    Case(2, 1, 32, 2, 96, 2, (14, 14), (3, 3), (2, 2), (1, 1), 1, "zeros", "channels_last", False),
    # inner pixels read in place, per block of 64 channels (the last one 16)
    Case(
        2, 1, 144, 1, 40, 1, (15, 15), (3, 3), (2, 2), (1, 1), 1, "reflect", "channels_last", True
    ),
    Case(2, 1, 96, 1, 24, 1, (14, 14), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    Case(2, 1, 40, 2, 16, 2, (9, 7), (5, 3), (2, 1), (1, 1), "same", "reflect", "strided", False),
    Case(2, 1, 64, 1, 16, 1, (10, 10), (3, 3), (1, 1), (1, 1), 1, "zeros", "channels_last", True),
    # weights of more than twice the intermediate: shared tiles
    Case(2, 1, 64, 1, 320, 2, (7, 7), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    Case(2, 1, 32, 2, 256, 2, (14, 14), (3, 3), (2, 2), (1, 1), 1, "zeros", "channels_last", False),
    Case(2, 1, 144, 1, 200, 1, (9, 9), (3, 3), (1, 1), (1, 1), 1, "reflect", "channels_last", True),
)


@given(
    case=cases(max_size=16, rank=2),
    count=st.sampled_from([2, 3]),
    layout=st.sampled_from(["contiguous", "strided", "channels_last"]),
)
def test_bands_of_rows_at_batch_1(case, count, layout, kernels_built):
    """Batch-1 calls whose intermediate is small: each thread computes one band of
    output rows (of one row and more; 3 threads over 4 rows take bands of 2, one thread none)."""
    case = replace(case, N=1, layout=layout)
    assume(output_fits(case))
    with env("on"), thread_count(count):
        check_separable(case)


@given(
    case=cases(max_size=16, rank=2),
    batch=st.integers(2, 7),
    count=st.sampled_from([2, 3, 4]),
)
def test_images_split_over_threads(case, batch, count, kernels_built):
    """Batches of at least one image a thread: each thread takes one run of consecutive
    tasks (for_tasks), also where the images do not divide evenly; fewer images than
    threads: tasks taken in turn."""
    case = replace(case, N=batch)
    assume(output_fits(case))
    with env("on"), thread_count(count):
        check_separable(case)
        check_depthwise(case)


def test_many_tiles_and_threads(kernels_on):
    """Shapes that cut into many tiles (whole rows and pieces of long 1d rows)."""
    for case in MANY_TILE_CASES:
        check_separable(case)
        check_depthwise(case)


GEMMS = sorted(_build.TILE_GEMM)


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("threads", [1, 2])
def test_every_tile_gemm_agrees(gemm, threads, kernels_on):
    with thread_count(threads), tile_gemm(gemm):
        for case in MANY_TILE_CASES + FEW_TILE_CASES:
            check_separable(case)


# Planar tiles of 256 and 1024 pixels, whose intermediate's channel rows are a multiple of 1
# KiB apart and get one cache line more (with and without the bias as an extra channel,
# pointwise groups).
CHANNEL_STRIDE_CASES = tuple(
    Case(
        2,
        2,
        12,
        1,
        16,
        groups,
        (side, side),
        (3, 3),
        (1, 1),
        (1, 1),
        1,
        "zeros",
        "contiguous",
        bias,
    )
    for side in (16, 32)
    for groups in (1, 2)
    for bias in (True, False)
)


@pytest.mark.parametrize("gemm", GEMMS)
def test_padded_channel_stride_in_every_tile_gemm(gemm, kernels_on):
    with tile_gemm(gemm):
        for case in CHANNEL_STRIDE_CASES:
            check_separable(case)


@pytest.mark.parametrize("gemm", GEMMS)
@settings(max_examples=20)
@given(case=cases(max_size=30, rank=2))
def test_every_tile_gemm_agrees_on_random_cases(gemm, case, kernels_built):
    with env("on"), tile_gemm(gemm):
        check_separable(case)


@settings(max_examples=12, deadline=None)
@given(
    channels=st.integers(86, 300),
    multiplier=st.integers(1, 3),
    outputs=st.integers(1, 40),
    size=st.integers(6, 24),
    kernel=st.sampled_from((1, 3, 5)),
    layout=st.sampled_from(("contiguous", "channels_last")),
    bias=st.booleans(),
)
def test_wide_intermediate(
    channels, multiplier, outputs, size, kernel, layout, bias, kernels_built
):
    """86-900 intermediate channels: the own tile GEMM's K in several equal blocks of at
    most 256 rows (without AVX-512, planar tiles of 64 or more pixels), each accumulated onto
    the output tile the one before wrote."""
    case = Case(
        2, 1, channels, multiplier, outputs, 1, (size, size + 3), (kernel, kernel), (1, 1),
        (1, 1), "same", "zeros", layout, bias,
    )  # fmt: skip
    with env("on"), tile_gemm("own"):
        check_separable(case)


# Separable outputs of 4 MiB or more in planes (or pixels) of whole cache lines, whose own
# tile GEMMs store around the caches (column blocks from the first line boundary; rows 144
# bytes long, so planar tiles start inside a line): output
# channels that are not a multiple of the micro-kernel's rows, groups, dilation, stride 2, a
# strided input, channels_last.
STREAMED_GEMM_CASES = (
    Case(2, 4, 16, 1, 70, 1, (120, 36), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    Case(
        2, 8, 24, 2, 33, 3, (64, 64), (5, 5), (1, 1), (2, 2), "same", "reflect", "contiguous", False
    ),
    Case(2, 4, 32, 1, 64, 1, (128, 128), (3, 3), (2, 2), (1, 1), 1, "replicate", "strided", True),
    # 300 intermediate channels: K in two blocks, the second one streaming the output
    Case(2, 1, 100, 3, 64, 1, (128, 128), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    # channels_last: pixels of 80 or 96 output channels (AVX-512: a 64-column weight panel
    # and a partial one; without it, 16-column panels)
    Case(2, 4, 24, 1, 80, 1, (60, 60), (3, 3), (1, 1), (1, 1), 1, "zeros", "channels_last", True),
    Case(
        2,
        3,
        16,
        2,
        96,
        2,
        (70, 66),
        (5, 3),
        (1, 1),
        (1, 1),
        "same",
        "circular",
        "channels_last",
        False,
    ),
)


@pytest.mark.parametrize("case", STREAMED_GEMM_CASES)
def test_streamed_tile_gemm_outputs(case, kernels_on):
    with tile_gemm("own"):
        check_separable(case)


# Inputs beyond 32 MiB, whose channels_last tiles touch their windows first (edges, padding,
# stride 2), and whose planar stride-2 tiles touch the next channel's window.
LARGE_INPUT_CASES = (
    Case(2, 2, 64, 1, 8, 1, (264, 256), (3, 3), (1, 1), (1, 1), 1, "zeros", "channels_last", True),
    Case(
        2, 1, 128, 1, 8, 1, (263, 255), (5, 5), (2, 2), (1, 1), 2, "reflect", "channels_last", False
    ),
    Case(2, 2, 64, 1, 8, 1, (264, 256), (3, 3), (2, 2), (1, 1), 1, "zeros", "contiguous", True),
    Case(2, 1, 128, 2, 8, 1, (263, 255), (5, 5), (2, 2), (1, 1), 2, "reflect", "contiguous", False),
)


# Planar depthwise outputs of 16 MiB or more, staged and streamed out (without AVX-512) in
# tasks of a few rows (8 KiB of input, 16 KiB for 7x7): row tasks that start and end inside
# the plane, zero rows at both ends, odd widths, a depth multiplier.
STAGED_DEPTHWISE_CASES = (
    Case(2, 2, 32, 1, 8, 1, (256, 256), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    Case(
        2, 2, 32, 1, 8, 1, (259, 257), (5, 5), (1, 1), (1, 1), "same", "zeros", "contiguous", True
    ),
    Case(2, 2, 32, 1, 8, 1, (263, 257), (7, 7), (1, 1), (1, 1), 3, "zeros", "contiguous", False),
    Case(2, 2, 16, 2, 8, 1, (260, 254), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True),
    # rows longer than a task (2048 outputs): row pieces
    Case(
        2, 1, 2, 1, 8, 1, (1100, 2100), (3, 3), (1, 1), (1, 1), (1, 2), "zeros", "contiguous", True
    ),
)


@pytest.mark.parametrize("case", STAGED_DEPTHWISE_CASES)
def test_staged_depthwise_outputs(case, kernels_on):
    check_depthwise(case)


@pytest.mark.parametrize("mode", sorted(_build.PREFETCH))
def test_prefetch_modes_agree(mode, kernels_on):
    with prefetch(mode):
        for case in MANY_TILE_CASES + FEW_TILE_CASES + LARGE_INPUT_CASES:
            check_separable(case)
            check_depthwise(case)


@pytest.mark.parametrize("mode", sorted(_build.PREFETCH))
@settings(max_examples=15)
@given(case=cases(max_size=30, rank=2))
def test_prefetch_modes_agree_on_random_cases(mode, case, kernels_built):
    with env("on"), prefetch(mode):
        check_separable(case)
        check_depthwise(case)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_agree(threads, kernels_on):
    case = Case(
        2, 2, 32, 1, 16, 1, (30, 30), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True
    )
    x = case.input()
    wd, wp, bd, bp = case.weights()
    with thread_count(threads):
        out = dispatch.separable(
            x, wd, wp, bd, bp, case.stride, case.dilation, case.plan(), "zeros"
        )
    expected = reference.separable_conv(_np(x), _np(wd), _np(wp), _np(bd), _np(bp), 1, 1)
    assert_close_to_reference(out, expected, rtol=RTOL)


def test_bfloat16_forward(kernels_on):
    if not dispatch._bf16_supported():
        pytest.skip("no native bfloat16 on this CPU")
    case = Case(
        2, 2, 32, 1, 24, 1, (17, 19), (3, 3), (1, 1), (1, 1), 1, "zeros", "contiguous", True
    )
    for layout in ("contiguous", "channels_last"):
        case.layout = layout
        x = case.input(torch.bfloat16)
        wd, wp, bd, bp = case.weights(torch.bfloat16)
        args = (x, wd, wp, bd, bp, case.stride, case.dilation, case.plan(), "zeros")
        fast = dispatch.separable(*args)
        assert fast is not None and fast.dtype == torch.bfloat16
        expected = reference.separable_conv(_np(x), _np(wd), _np(wp), _np(bd), _np(bp), 1, 1)
        scale = np.abs(expected).max()
        assert np.abs(fast.double().numpy() - expected).max() <= 2e-2 * scale
        dw = dispatch.depthwise(x, wd, bd, case.stride, case.dilation, case.plan(), "zeros")
        dexp = reference.depthwise_conv(_np(x), _np(wd), _np(bd), 1, 1)
        assert np.abs(dw.double().numpy() - dexp).max() <= 2e-2 * np.abs(dexp).max()
