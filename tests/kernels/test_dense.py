"""The kernels' dense forward of few input channels (``csrc/dense.h``: a network's stem, its
norm folded into the weights, the clamp on the accumulators) equals the NumPy reference:
planar and channels_last inputs, strides, dilations, zero padding larger than the kernel's
reach, with and without a norm, bias and clamp, over several thread counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from sepconv.kernels import _ops
from sepconv.reference import batch_norm_inference, conv
from tests.conftest import assert_close_to_reference
from tests.kernels.helpers import env, random_norm
from tests.kernels.helpers import threads as thread_count

pytestmark = pytest.mark.usefixtures("kernels_built")

CLAMPS = [(None, None), (0.0, 6.0), (0.0, None), (-1.0, 0.5)]


def _np64(t):
    return None if t is None else t.detach().double().numpy()


def _run(
    *,
    n,
    c,
    o,
    size,
    kernel,
    stride,
    padding,
    dilation,
    channels_last,
    norm,
    bias,
    clamp,
    seed,
    threads=2,
):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *size, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, *kernel, generator=gen)
    b = torch.randn(o, generator=gen) if bias else None
    norms = random_norm(o, norm == "affine", gen) if norm else (None,) * 4
    eps, (lo, hi) = 1e-3, clamp
    x_before = x.clone()
    with thread_count(threads):
        params = (norm is not None, eps, lo, hi)
        out = _ops.dense_forward_raw(x, weight, b, stride, padding, dilation, params, norms)
    assert torch.equal(x, x_before)
    expected = conv(_np64(x), _np64(weight), _np64(b), stride, padding, dilation)
    if norm:
        expected = batch_norm_inference(expected, *[_np64(t) for t in norms], eps)
    # float32 rounding scales with the sums before the clamp (7x7 on 4 channels: 196 terms)
    scale = max(1.0, float(np.abs(expected).max()))
    if lo is not None or hi is not None:
        expected = np.clip(expected, lo, hi)
    planar = x.is_contiguous()  # (a channels_last x of one channel or pixel is both)
    layout = torch.contiguous_format if planar else torch.channels_last
    assert out.is_contiguous(memory_format=layout)
    assert_close_to_reference(out, expected, rtol=1e-5, scale=scale)


def _assume_kernel_fits(size, kernel, padding, dilation):
    """Only cases whose dilated kernel fits the padded input (an output of at least 1)."""
    reach = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    assume(all(s + 2 * p >= r for s, p, r in zip(size, padding, reach)))


pairs = st.tuples
_STEM = dict(
    n=1,
    c=3,
    o=32,
    size=(17, 16),
    kernel=(3, 3),
    stride=(2, 2),
    padding=(1, 1),
    dilation=(1, 1),
    channels_last=False,
    norm="affine",
    bias=False,
    clamp=(0.0, 6.0),
    threads=2,
    seed=0,
)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    o=st.integers(1, 150),
    size=pairs(st.integers(1, 19), st.integers(1, 19)),
    kernel=pairs(st.integers(1, 7), st.integers(1, 7)),
    stride=pairs(st.integers(1, 3), st.integers(1, 3)),
    padding=pairs(st.integers(0, 4), st.integers(0, 4)),
    dilation=pairs(st.integers(1, 3), st.integers(1, 3)),
    channels_last=st.booleans(),
    norm=st.sampled_from([None, "plain", "affine"]),
    bias=st.booleans(),
    clamp=st.sampled_from(CLAMPS),
    threads=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)
# MobileNet's stem (3 -> 32, 3x3 stride 2) and ResNet's (3 -> 64, 7x7 stride 2, padding 3)
@example(**_STEM)
@example(**dict(_STEM, o=64, size=(19, 18), kernel=(7, 7), padding=(3, 3), channels_last=True))
# 196 terms a sum clamped to [-1, 0.5]: off by 1.4e-5 from the reference (float32 rounding
# of sums up to about 20), which a tolerance scaled by the clamped values rejected
@example(
    **dict(
        _STEM,
        c=4,
        o=7,
        size=(13, 14),
        kernel=(7, 7),
        stride=(1, 1),
        padding=(0, 0),
        norm=None,
        clamp=(-1.0, 0.5),
        threads=1,
    )
)
def test_dense_matches_numpy(
    n,
    c,
    o,
    size,
    kernel,
    stride,
    padding,
    dilation,
    channels_last,
    norm,
    bias,
    clamp,
    threads,
    seed,
):
    case = dict(locals())
    _assume_kernel_fits(size, kernel, padding, dilation)
    _run(**case)


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(33, 110),
    kernel=pairs(st.integers(1, 5), st.integers(1, 5)),
    stride=pairs(st.integers(1, 2), st.integers(1, 3)),
    padding=pairs(st.integers(0, 3), st.integers(0, 3)),
    dilation=pairs(st.integers(1, 2), st.integers(1, 2)),
    o=st.integers(1, 20),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
# planar, stride 2 with odd padding (phases swapped from the first column) and dilation,
# several 32-column pieces; stride 1 with 100 output columns (pixel blocks 3 + 2 + 2)
@example(110, (3, 5), (1, 2), (1, 3), (1, 2), 20, False, 0)
@example(100, (3, 3), (1, 1), (1, 1), (1, 1), 9, False, 1)
def test_dense_wide_rows_match_numpy(
    width, kernel, stride, padding, dilation, o, channels_last, seed
):
    """Rows wider than the 19 columns above: planar rows split by phase in several 32-column
    pieces, output rows in several blocks of pixel vectors (the examples fix the cases a
    derandomized run may not draw)."""
    size = (6, width)
    _assume_kernel_fits(size, kernel, padding, dilation)
    _run(
        n=1,
        c=3,
        o=o,
        size=size,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        channels_last=channels_last,
        norm=None,
        bias=True,
        clamp=(None, None),
        seed=seed,
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_dense_mobilenet_stem_size(channels_last):
    """224 x 224 RGB images, 32 filters 3x3 stride 2: rows split over the threads."""
    _run(**dict(_STEM, n=2, size=(224, 224), channels_last=channels_last, seed=3))


@pytest.mark.parametrize("size", [(224, 224), (222, 222)])
def test_dense_large_planar_outputs(size):
    """Planar outputs of 8 MiB or more: written around the caches where rows are whole
    vectors (112 columns), with plain stores otherwise (111)."""
    _run(**dict(_STEM, n=6, size=size, seed=4))


def test_dense_keeps_nan():
    """A NaN input reaches the outputs that read it as NaN through the clamp, as PyTorch's
    activations keep it."""
    x = torch.randn(1, 3, 6, 6)
    x[0, 1, 2, 2] = float("nan")
    out = _ops.dense_forward_raw(
        x, torch.ones(5, 3, 3, 3), None, (1, 1), (1, 1), (1, 1), (False, 1e-5, 0.0, 6.0)
    )
    assert torch.isnan(out[0, :, 1:4, 1:4]).all()
    assert not torch.isnan(out[0, :, 5, 5]).any()


def test_dense_off_is_not_consulted():
    """The raw call runs whatever SEPCONV_KERNELS says (the callers decide)."""
    x = torch.randn(2, 3, 9, 9)
    weight = torch.randn(5, 3, 3, 3)
    with env("off"):
        out = _ops.dense_forward_raw(
            x, weight, None, (2, 2), (1, 1), (1, 1), (False, 1e-5, None, None)
        )
    expected = torch.nn.functional.conv2d(x, weight, None, 2, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
