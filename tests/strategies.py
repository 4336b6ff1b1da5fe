"""Hypothesis strategies for convolution configurations shared by the test packages."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from sepconv.reference import padding_pairs


@dataclass(frozen=True)
class ConvCase:
    """One convolution configuration: sizes and options a layer or functional takes."""

    rank: int
    batch: int
    in_channels: int
    out_channels: int
    depth_multiplier: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: object
    padding_mode: str
    spatial: tuple[int, ...]
    bias: bool

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.spatial)


@st.composite
def conv_cases(
    draw,
    ranks=(1, 2, 3),
    max_channels: int = 4,
    modes=("zeros", "reflect", "replicate", "circular"),
):
    """Random but valid conv configurations, small enough for the NumPy reference."""
    rank = draw(st.sampled_from(ranks))
    max_kernel = {1: 5, 2: 4, 3: 3}[rank]
    kernel = tuple(draw(st.lists(st.integers(1, max_kernel), min_size=rank, max_size=rank)))
    stride = tuple(draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank)))
    dilation = tuple(draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank)))
    paddings = [
        st.integers(0, 2),
        st.just("same"),
        st.just("valid"),
        st.lists(st.integers(0, 2), min_size=rank, max_size=rank).map(tuple),
    ]
    if rank == 1:
        paddings.append(st.just("causal"))
    padding = draw(st.one_of(*paddings))
    mode = draw(st.sampled_from(modes))
    max_side = {1: 12, 2: 9, 3: 6}[rank]
    spatial = tuple(
        draw(st.integers(d * (k - 1) + 1, d * (k - 1) + max_side)) for k, d in zip(kernel, dilation)
    )
    pairs = padding_pairs(padding, spatial, kernel, stride, dilation)
    if mode in ("reflect", "circular"):
        # reflect needs padding < size; circular needs padding <= size
        for (lo, hi), n in zip(pairs, spatial):
            if max(lo, hi) >= n:
                mode = "zeros"
    return ConvCase(
        rank=rank,
        batch=draw(st.integers(1, 2)),
        in_channels=draw(st.integers(1, max_channels)),
        out_channels=draw(st.integers(1, 5)),
        depth_multiplier=draw(st.integers(1, 3)),
        kernel_size=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
        padding_mode=mode,
        spatial=spatial,
        bias=draw(st.booleans()),
    )
