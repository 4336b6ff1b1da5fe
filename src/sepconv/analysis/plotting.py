"""Roofline PNGs of profiled models (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sepconv._io import atomic_path

if TYPE_CHECKING:
    from sepconv.analysis.report import Report

_KIND_COLORS = {
    "conv": "#1f77b4",
    "grouped": "#17becf",
    "depthwise": "#ff7f0e",
    "pointwise": "#2ca02c",
    "separable": "#d62728",
    "conv-transpose": "#9467bd",
    "depthwise-transpose": "#8c564b",
    "linear": "#e377c2",
    "norm": "#7f7f7f",
    "activation": "#bcbd22",
    "pooling": "#aec7e8",
    "other": "#000000",
}
_MARKERS = ("o", "s", "^", "D")


def plot_roofline(
    reports: Sequence[Report],
    path: str | Path,
    *,
    title: str | None = None,
    labels: Sequence[str] | None = None,
    annotate: int = 6,
) -> Path:
    """Each layer of each report as a point (FLOPs/byte, achieved GFLOP/s) under the roofline.

    Achieved FLOP/s is ``2 * macs / forward_ms``; without measurements a layer sits on the
    roof at its ``bound_ms``. Marker area grows with the layer's share of the time; layers
    without MACs (activations, max pooling) have no place on a log axis and are counted in
    the caption. The ``annotate`` slowest layers of each report are labelled.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    peaks = next((r.peaks for r in reports if r.peaks is not None), None)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    xs_all: list[float] = []
    ys_all: list[float] = []
    left_out = 0
    kinds_seen: dict[str, None] = {}
    for index, report in enumerate(reports):
        marker = _MARKERS[index % len(_MARKERS)]
        points = []
        for row in report.rows:
            seconds = (row.forward_ms if row.forward_ms else row.bound_ms or 0.0) / 1e3
            if row.macs <= 0 or row.bytes <= 0 or seconds <= 0:
                left_out += 1
                continue
            points.append((row, row.intensity, row.flops / seconds))
        for row, x, y in points:
            kinds_seen[row.kind] = None
            size = 30 + 400 * (row.share or 0.0)
            ax.scatter(
                x,
                y / 1e9,
                s=size,
                marker=marker,
                color=_KIND_COLORS.get(row.kind, "#000000"),
                alpha=0.75,
                edgecolors="black",
                linewidths=0.5,
                zorder=3,
            )
            xs_all.append(x)
            ys_all.append(y / 1e9)
        slowest = sorted(points, key=lambda p: -(p[0].time_ms or p[0].bound_ms or 0.0))[:annotate]
        for row, x, y in slowest:
            ax.annotate(
                row.name,
                (x, y / 1e9),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=7,
                zorder=4,
            )
    x_lo = min([*xs_all, peaks.ridge if peaks else 1.0]) / 4 if xs_all else 0.1
    x_hi = max([*xs_all, peaks.ridge if peaks else 1.0]) * 4 if xs_all else 100.0
    if peaks is not None:
        import numpy as np

        xs = np.geomspace(x_lo, x_hi, 200)
        roof = np.minimum(peaks.compute_flops, xs * peaks.copy_bandwidth) / 1e9
        ax.plot(
            xs,
            roof,
            color="black",
            linewidth=2,
            zorder=2,
            label=f"roofline: {peaks.copy_bandwidth / 1e9:.0f} GB/s copy, {peaks.compute_flops / 1e9:.0f} GFLOP/s compute",
        )
        ax.axvline(peaks.ridge, color="grey", linestyle=":", linewidth=1, zorder=1)
        ys_all.append(peaks.compute_flops / 1e9)
    for kind in kinds_seen:
        ax.scatter(
            [],
            [],
            color=_KIND_COLORS.get(kind, "#000000"),
            label=kind,
            s=40,
            edgecolors="black",
            linewidths=0.5,
        )
    if len(reports) > 1:
        for index, report in enumerate(reports):
            name = labels[index] if labels else report.model
            ax.scatter(
                [],
                [],
                marker=_MARKERS[index % len(_MARKERS)],
                color="white",
                edgecolors="black",
                label=name,
                s=40,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    if ys_all:
        ax.set_ylim(min(ys_all) / 4, max(ys_all) * 3)
    ax.set_xlabel("arithmetic intensity (FLOPs per byte of memory traffic, lower bound)")
    measured = any(r.measured for r in reports)
    ax.set_ylabel(
        "achieved GFLOP/s (measured forward)" if measured else "attainable GFLOP/s (roofline bound)"
    )
    first = reports[0]
    shapes = ", ".join("x".join(map(str, s)) for s in first.input_shapes)
    ax.set_title(
        title
        or f"Roofline: {' vs '.join(labels or [r.model for r in reports])} on {shapes} ({first.dtype})",
        fontsize=10,
    )
    if peaks is not None:
        ax.text(
            peaks.ridge,
            ax.get_ylim()[0] * 1.3,
            f" ridge {peaks.ridge:.1f} FLOP/B",
            fontsize=7,
            color="grey",
        )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    if left_out:
        fig.text(
            0.01,
            0.01,
            f"{left_out} layer(s) without MACs (activations, max pooling, ...) not shown",
            fontsize=7,
            color="grey",
        )
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
