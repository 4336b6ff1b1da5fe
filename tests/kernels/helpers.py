"""Random depthwise/separable problems for the kernel tests."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from sepconv.functional.padding import resolve_padding
from sepconv.kernels import _build

MODES = ("zeros", "reflect", "replicate", "circular")


@dataclass
class Case:
    rank: int
    N: int
    C: int
    M: int
    O: int  # noqa: E741
    G: int
    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: object
    mode: str
    layout: str  # "contiguous", "channels_last", "strided", "channels_last_strided" (2d)
    bias: bool

    def plan(self):
        return resolve_padding(self.padding, self.kernel, self.stride, self.dilation)

    def input(self, dtype=torch.float32, seed=0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        shape = (self.N, self.C, *self.spatial)
        if self.layout in ("strided", "channels_last_strided"):
            # every other element of a larger tensor, last dim
            big = torch.randn(*shape[:-1], 2 * shape[-1] + 1, generator=gen, dtype=torch.float64)
            if self.layout == "channels_last_strided":  # channels innermost, pixels 2C apart
                big = big.contiguous(memory_format=torch.channels_last)
            return big[..., 1::2].to(dtype)
        x = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
        if self.layout == "channels_last":
            if self.rank == 2:
                return x.contiguous(memory_format=torch.channels_last)
            return x.transpose(1, 2).contiguous().transpose(1, 2)
        return x

    def weights(self, dtype=torch.float32, seed=1):
        gen = torch.Generator().manual_seed(seed)
        mid = self.C * self.M

        def rnd(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

        wd = rnd(mid, 1, *self.kernel)
        wp = rnd(self.O, mid // self.G, *([1] * self.rank))
        bd = rnd(mid) if self.bias else None
        bp = rnd(self.O) if self.bias else None
        return wd, wp, bd, bp


@st.composite
def cases(draw, max_size: int = 11, rank=None) -> Case:
    rank = draw(st.sampled_from((1, 2))) if rank is None else rank
    N = draw(st.integers(1, 3))
    C = draw(st.integers(1, 5))
    M = draw(st.integers(1, 3))
    mid = C * M
    groups = [g for g in (1, 2, 3) if mid % g == 0 and (mid // g) % M == 0]
    G = draw(st.sampled_from(groups))
    O = G * draw(st.integers(1, 4))  # noqa: E741
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    spatial = tuple(draw(st.integers(max(1, s - 2), max(s, max_size))) for s in span)
    options = ["valid", "same", "int", "tuple"] + (["causal"] if rank == 1 else [])
    kind = draw(st.sampled_from(options))
    if kind == "int":
        padding = draw(st.integers(0, 3))
    elif kind == "tuple":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(rank))
    else:
        padding = kind
    mode = draw(st.sampled_from(MODES))
    layout = draw(st.sampled_from(("contiguous", "channels_last", "strided")))
    bias = draw(st.booleans())
    return Case(rank, N, C, M, O, G, spatial, kernel, stride, dilation, padding, mode, layout, bias)


def output_fits(case: Case) -> bool:
    """Whether PyTorch accepts the case (non-empty output, reflect/circular padding sizes)."""
    plan = case.plan()
    amounts = plan.amounts(case.spatial)
    rank = case.rank
    for axis in range(rank):
        lo, hi = amounts[2 * (rank - 1 - axis)], amounts[2 * (rank - 1 - axis) + 1]
        n = case.spatial[axis]
        if case.mode == "reflect" and max(lo, hi) >= n:
            return False
        if case.mode != "zeros" and max(lo, hi) > n:
            return False
        span = case.dilation[axis] * (case.kernel[axis] - 1) + 1
        if n + lo + hi < span:
            return False
    return True


def numpy_separable(case: Case, x, weights, **mid):
    """The NumPy reference of ``case``'s separable convolution of ``x`` with ``weights``
    ``(wd, wp, bd, bp)`` (``mid``: :func:`sepconv.reference.separable_conv`'s ``mid_norm``,
    ``mid_clamp``)."""
    from sepconv import reference

    def np64(t):
        return None if t is None else t.detach().double().numpy()

    wd, wp, bd, bp = weights
    return reference.separable_conv(
        np64(x),
        np64(wd),
        np64(wp),
        np64(bd),
        np64(bp),
        case.stride,
        case.padding,
        case.dilation,
        case.mode,
        **mid,
    )


def count_mid_kernel_calls(monkeypatch) -> list[int]:
    """A one-element list counting the fused kernel's calls with a stage between or after the
    convolutions (``dispatch._SEPARABLE_STAGES``) from now on."""
    from sepconv.kernels import dispatch

    calls = [0]
    raw = dispatch._SEPARABLE_STAGES[1]

    def counted(*args):
        calls[0] += 1
        return raw(*args)

    monkeypatch.setattr(dispatch, "_SEPARABLE_STAGES", (None, counted))
    return calls


class env:
    """``with env("on"):`` sets SEPCONV_KERNELS for the block and restores it."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __enter__(self):
        import os

        self.old = os.environ.get("SEPCONV_KERNELS")
        os.environ["SEPCONV_KERNELS"] = self.value

    def __exit__(self, *exc):
        import os

        if self.old is None:
            os.environ.pop("SEPCONV_KERNELS", None)
        else:
            os.environ["SEPCONV_KERNELS"] = self.old


@st.composite
def stride1_square_cases(draw, max_size: int = 40, direct: bool = False) -> Case:
    """2d planar cases of the row-blocked path: square 3/5/7 kernels, stride and dilation 1,
    widths that are and are not multiples of the vector width, heights of every remainder
    modulo the row block, every padding mode, paddings from 0 to k - 1.

    ``direct``: only the cases the kernels compute without a padded copy of the input or a
    scatter of the input gradient (zero padding, contiguous or channels_last input, one
    filter per channel)."""
    k = draw(st.sampled_from((3, 5, 7)))
    spatial = (draw(st.integers(k, max_size)), draw(st.integers(k, max_size)))
    # Padding up to k - 1 on a side: the depthwise forward reads zero-padded contiguous
    # planes straight from the input, and these move the masked edge columns and zero rows.
    padding = draw(st.sampled_from(("valid", "same", k // 2, (k // 2, 1), (k - 1, 0), (0, k - 1))))
    mode = "zeros" if padding == "valid" or direct else draw(st.sampled_from(MODES))
    # Whole channel vectors too: the channels_last loops have a path for blocks of them.
    channels = st.sampled_from((1, 2, 3, 16, 32, 64)) if direct else st.integers(1, 4)
    return Case(
        2,
        draw(st.integers(1, 2)),
        draw(channels),
        1 if direct else draw(st.integers(1, 2)),
        draw(st.integers(1, 5)),
        1,
        spatial,
        (k, k),
        (1, 1),
        (1, 1),
        padding,
        mode,
        draw(st.sampled_from(("contiguous", "channels_last" if direct else "strided"))),
        draw(st.booleans()),
    )


@st.composite
def stride2_direct_cases(draw, max_size: int = 80) -> Case:
    """2d planar 3x3 cases at stride 2 with zero padding, which the kernels read straight from
    the input: widths across several 32-column input spans, heights of every remainder modulo
    the 8-row block, paddings 0-2 (asymmetric, TensorFlow "same"), depth multipliers; and
    neighbours that take the padded copy instead (stride 2 along one axis only, dilation 2).
    """
    spatial = (draw(st.integers(5, 40)), draw(st.integers(5, max_size)))
    stride = draw(st.sampled_from(((2, 2), (2, 2), (2, 2), (2, 1), (1, 2))))
    dilation = draw(st.sampled_from(((1, 1), (1, 1), (1, 1), (2, 1), (1, 2))))
    padding = draw(st.sampled_from(("valid", "same", 1, 2, (1, 0), (0, 2), (2, 1))))
    return Case(
        2,
        draw(st.integers(1, 2)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 2)),
        draw(st.integers(1, 5)),
        1,
        spatial,
        (3, 3),
        stride,
        dilation,
        padding,
        "zeros",
        "contiguous",
        draw(st.booleans()),
    )


@st.composite
def inner_pixel_cases(draw) -> Case:
    """2d channels_last cases whose inner pixels (window inside the image) the kernels read
    straight from the input: whole channel vectors, one filter per channel; column strides
    2-3 with any filter and width; at column stride 1, dilation 2 or filters other than 5
    and 7 wide (those keep the padded copy), and outputs of any width (AVX-512 builds copy
    those of 16 or fewer columns); every padding mode, padding up to k - 1, pixels C or 2C
    apart."""
    kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if stride[1] == 1 and dilation[1] == 1 and kernel[1] in (5, 7):
        stride = (stride[0], 2)
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    height = draw(st.integers(span[0], span[0] + 12))
    width = draw(st.integers(span[1], 16 * stride[1] + span[1] + 24))
    padding = draw(
        st.sampled_from(
            (
                "valid",
                "same",
                (kernel[0] // 2, kernel[1] // 2),
                (kernel[0] - 1, 0),
                (0, kernel[1] - 1),
            )
        )
    )
    return Case(
        2,
        draw(st.integers(1, 2)),
        draw(st.sampled_from((16, 32, 48, 128))),
        1,
        draw(st.integers(1, 5)),
        1,
        (height, width),
        kernel,
        stride,
        dilation,
        padding,
        "zeros" if padding == "valid" else draw(st.sampled_from(MODES)),
        draw(st.sampled_from(("channels_last", "channels_last_strided"))),
        draw(st.booleans()),
    )


@contextlib.contextmanager
def _library_setting(setter: str, code: int):
    """Call the library's ``setter`` with ``code`` for the block, then restore the old value."""
    set_value = getattr(_build.load(), setter)
    old = set_value(code)
    try:
        yield
    finally:
        set_value(old)


def tile_gemm(name: str):
    """Run the tile GEMMs one way: own kernel, MKL, or by layout and tile count."""
    return _library_setting("sepconv_set_own_gemm", _build.TILE_GEMM[name])


def prefetch(name: str):
    """Bring input into the cache ahead of the loops (prefetches, touch passes), or not."""
    return _library_setting("sepconv_set_reads", _build.PREFETCH[name])


@contextlib.contextmanager
def threads(count: int):
    """``torch.set_num_threads(count)`` for the block, then the old count."""
    old = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def random_norm(channels: int, affine: bool, gen: torch.Generator) -> tuple:
    """A batch norm's ``(running_mean, running_var, weight, bias)`` away from the identity
    (weight and bias None where not ``affine``)."""
    stats = (0.3 * torch.randn(channels, generator=gen), 0.5 + torch.rand(channels, generator=gen))
    scale = 1 + 0.2 * torch.randn(channels, generator=gen)
    shift = 0.2 * torch.randn(channels, generator=gen)
    return (*stats, *((scale, shift) if affine else (None, None)))
