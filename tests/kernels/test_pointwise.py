"""The kernels' 1x1 forward of inference (``csrc/pointwise.h``: the norm folded into the
weight, the own GEMM, the clamp in cache) equals the NumPy reference: planar and
channels_last inputs, with and without a norm, bias and clamp, over its task splits (column
chunks, row blocks, the transposed channels_last route)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sepconv.kernels import _ops
from sepconv.reference import batch_norm_inference, conv
from tests.conftest import assert_close_to_reference
from tests.kernels.helpers import env, random_norm, threads

pytestmark = pytest.mark.usefixtures("kernels_built")

CLAMPS = [(None, None), (0.0, 6.0), (0.0, None), (-1.0, 0.5)]


def _numpy_pointwise(x, weight, bias, norm, eps, lo, hi) -> tuple[np.ndarray, float]:
    """The reference output, and the scale of its float32 rounding: the largest magnitude
    before the clamp (at least 1)."""

    def np64(t):
        return None if t is None else t.detach().double().numpy()

    out = conv(np64(x), np64(weight), np64(bias))
    if norm[0] is not None:
        out = batch_norm_inference(out, *[np64(t) for t in norm], eps)
    scale = max(1.0, float(np.abs(out).max())) if out.size else 1.0
    if lo is not None or hi is not None:
        out = np.clip(out, lo, hi)
    return out, scale


def _run(n, c, o, h, w, channels_last, has_norm, affine, has_bias, clamp, seed, count=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, 1, 1, generator=gen)
    bias = torch.randn(o, generator=gen) if has_bias else None
    norm = random_norm(o, affine, gen) if has_norm else (None,) * 4
    eps, (lo, hi) = 1e-3, clamp
    x_before = x.clone()
    with threads(count):
        out = _ops.pointwise_forward_raw(x, weight, bias, (has_norm, eps, lo, hi), norm)
    assert torch.equal(x, x_before)
    expected, scale = _numpy_pointwise(x, weight, bias, norm, eps, lo, hi)
    assert out.shape == (n, o, h, w)
    planar = x.is_contiguous()  # (a channels_last x of one channel or pixel is both)
    assert out.is_contiguous(
        memory_format=torch.contiguous_format if planar else torch.channels_last
    )
    assert_close_to_reference(out, expected, rtol=1e-5, scale=scale)


_EXAMPLE = dict(
    n=1,
    c=64,
    o=128,
    h=2,
    w=2,
    channels_last=False,
    has_norm=True,
    affine=True,
    has_bias=True,
    clamp=(0.0, 6.0),
    threads=2,
    seed=0,
)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 70),
    o=st.integers(1, 150),
    h=st.integers(1, 13),
    w=st.integers(1, 13),
    channels_last=st.booleans(),
    has_norm=st.booleans(),
    affine=st.booleans(),
    has_bias=st.booleans(),
    clamp=st.sampled_from(CLAMPS),
    threads=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)
# channels_last through planes (N P (C + O) < O C: transposing_pays), and planar with row blocks
@example(**dict(_EXAMPLE, channels_last=True))
@example(**dict(_EXAMPLE, o=100, w=3, affine=False, has_bias=False, clamp=(0.0, None)))
def test_pointwise_matches_numpy(
    n, c, o, h, w, channels_last, has_norm, affine, has_bias, clamp, threads, seed
):
    _run(n, c, o, h, w, channels_last, has_norm, affine, has_bias, clamp, seed, count=threads)


@settings(max_examples=20, deadline=None)
@given(
    c=st.integers(1, 40),
    o=st.integers(1, 70),
    h=st.integers(14, 40),
    w=st.integers(14, 40),
    channels_last=st.booleans(),
    threads=st.sampled_from([2, 3, 4]),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
@example(c=24, o=30, h=28, w=28, channels_last=False, threads=2, batch=1, seed=0)  # (384, 400)
def test_pointwise_fewer_images_than_threads(c, o, h, w, channels_last, threads, batch, seed):
    """One to three images on two to four threads. Fewer images than threads: planar bands
    of pixels, or blocks of output channels where the plane is small (fixed_parts);
    channels_last blocks of pixel rows of equal size; each thread's part fixed from call to
    call."""
    _run(batch, c, o, h, w, channels_last, True, True, True, (0.0, 6.0), seed, count=threads)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 8, 40, 40, 24),  # planar: several column chunks an image
        (1, 96, 7, 7, 576),  # few pixels, a large weight: row blocks / transposed
        (3, 5, 33, 31, 7),  # odd sizes, few output channels
        # outputs of 8 MiB or more, written around the caches (stream_pw_output: from 8 MiB,
        # or from half a smaller L3): whole lines; planes of odd length (lines
        # straddle rows); channels_last rows of 200 channels, not whole lines, stored as usual
        (2, 16, 128, 128, 64),
        (1, 7, 97, 101, 224),
        (1, 9, 105, 101, 200),
        # streamed 7x7 planes whose images start off a line: each GEMM's first column block
        # ends at the line, so its last block's columns past whole vectors are not N's
        (430, 16, 7, 7, 100),
    ],
)
def test_pointwise_larger_shapes(shape, channels_last):
    n, c, h, w, o = shape
    _run(n, c, o, h, w, channels_last, True, True, True, (0.0, 6.0), seed=1)


@pytest.mark.parametrize("size", [3, 7, 14])
def test_pointwise_keeps_nan(size):
    """A NaN input stays NaN through the clamp, as PyTorch's activations keep it: in whole
    vectors of pixels and in the GEMM's tail columns (7x7 and 14x14 planes end in 1 and 4)."""
    x = torch.randn(1, 4, size, size)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, -1, -1] = float("nan")
    out = _ops.pointwise_forward_raw(x, torch.ones(6, 4, 1, 1), None, (False, 1e-5, 0.0, 6.0))
    assert torch.isnan(out[0, :, 1, 1]).all()
    assert torch.isnan(out[0, :, -1, -1]).all()
    assert not torch.isnan(out[0, :, 0, 0]).any()


def test_pointwise_off_is_not_consulted():
    """The raw call runs whatever SEPCONV_KERNELS says (the callers decide)."""
    x = torch.randn(2, 3, 4, 4)
    weight = torch.randn(5, 3, 1, 1)
    with env("off"):
        out = _ops.pointwise_forward_raw(x, weight, None, (False, 1e-5, None, None))
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight), rtol=1e-5, atol=1e-5)
