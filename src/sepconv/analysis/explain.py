"""``sepconv.explain``: what a conv's weight holds, which filter reads which input channel, and
what the standard, depthwise and separable forms of it cost.

Example (seed 003)::

    >>> e = explain(10, 32, 3, input_size=50)
    >>> e.weight_shape
    (32, 10, 3, 3)
    >>> e.forms["standard"].params, e.forms["separable"].params
    (2912, 452)

With ``groups=in_channels`` and ``out_channels = K * in_channels`` (a depthwise conv with depth
multiplier ``K``), filters ``c*K ... c*K+K-1`` read input channel ``c``::

    >>> explain(3, 6, 3, groups=3).filters_of(1)
    range(2, 4)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sepconv import _validation as check
from sepconv import cost
from sepconv._io import atomic_path

_AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


@dataclass(frozen=True)
class Axis:
    """One axis of a weight tensor."""

    size: int
    name: str
    meaning: str


@dataclass(frozen=True)
class Group:
    """Filters ``filters`` (= output channels) read input channels ``inputs``."""

    index: int
    filters: range
    inputs: range


@dataclass(frozen=True)
class Form:
    """One way to build the layer: its weight shapes, parameters and MACs.

    ``macs`` is for the whole input when ``input_size`` was given, else per output position.
    """

    name: str
    weight_shapes: tuple[tuple[int, ...], ...]
    params: int
    macs: int


@dataclass(frozen=True)
class Explanation:
    """Weight layout, channel mapping and costs of a conv ``in_channels -> out_channels``.

    ``forms`` holds ``"standard"`` (dense, groups=1), ``"depthwise"`` (the depthwise stage of
    the separable form, one filter per input channel), ``"pointwise"`` (its 1x1 stage),
    ``"separable"`` (their sum) and, when ``groups > 1``, ``"given"`` (the conv as asked for).
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    groups: int
    input_size: tuple[int, ...] | None
    output_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    bias: bool
    weight_shape: tuple[int, ...]
    axes: tuple[Axis, ...]
    groups_map: tuple[Group, ...]
    forms: dict[str, Form]

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def depth_multiplier(self) -> int | None:
        """``out_channels / in_channels`` for a depthwise conv (``groups == in_channels``), else None."""
        if self.groups == self.in_channels and self.out_channels % self.in_channels == 0:
            return self.out_channels // self.in_channels
        return None

    @property
    def macs_per_position(self) -> bool:
        """True when MACs are per output position (no ``input_size`` given)."""
        return self.input_size is None

    def filters_of(self, input_channel: int) -> range:
        """The filters (= output channels) that read ``input_channel``."""
        if not 0 <= input_channel < self.in_channels:
            raise ValueError(
                f"input_channel must be in [0, {self.in_channels}), got {input_channel}"
            )
        return self.groups_map[input_channel // (self.in_channels // self.groups)].filters

    def inputs_of(self, filter_index: int) -> range:
        """The input channels that filter (= output channel) ``filter_index`` reads."""
        if not 0 <= filter_index < self.out_channels:
            raise ValueError(
                f"filter_index must be in [0, {self.out_channels}), got {filter_index}"
            )
        return self.groups_map[filter_index // (self.out_channels // self.groups)].inputs

    def mapping_lines(self, limit: int = 8) -> list[str]:
        """Sentences saying which filters read which input channels (at most ``limit`` groups)."""
        c, o, g = self.in_channels, self.out_channels, self.groups
        if g == 1:
            return [
                f"groups=1: every filter ({_span(range(o))}) reads every input channel ({_span(range(c))})."
            ]
        lines = []
        m = self.depth_multiplier
        if m is not None:
            lines.append(
                f"groups=in_channels={c}, out_channels={m} x {c}: filters c*{m} ... c*{m}+{m - 1} read input channel c."
                if m > 1
                else f"groups=in_channels={c}, out_channels={c}: filter c reads input channel c only."
            )
        else:
            lines.append(
                f"groups={g}: filters {o // g}*g ... {o // g}*g+{o // g - 1} read input channels "
                f"{c // g}*g ... {c // g}*g+{c // g - 1} of group g."
            )
        shown = (
            self.groups_map
            if g <= limit
            else (*self.groups_map[: limit - 2], None, self.groups_map[-1])
        )
        for group in shown:
            if group is None:
                lines.append("  ...")
                continue
            noun = "input channel" if len(group.inputs) == 1 else "input channels"
            lines.append(f"  {noun} {_span(group.inputs)} -> filters {_span(group.filters)}")
        return lines

    def to_dict(self) -> dict:
        d = asdict(self)
        d["groups_map"] = [
            {
                "group": g.index,
                "filters": [g.filters.start, g.filters.stop - 1],
                "inputs": [g.inputs.start, g.inputs.stop - 1],
            }
            for g in self.groups_map
        ]
        d["forms"] = {k: asdict(v) for k, v in self.forms.items()}
        d["macs_per_position"] = self.macs_per_position
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=list)

    def to_text(self) -> str:
        """The explanation as plain text (what ``sepconv explain`` prints)."""
        k = "x".join(map(str, self.kernel_size))
        lines = [
            f"Conv{self.rank}d({self.in_channels} -> {self.out_channels}, kernel {k}, groups={self.groups})",
            "",
        ]
        lines.append(f"Weight shape {_tuple(self.weight_shape)}:")
        for i, axis in enumerate(self.axes):
            lines.append(f"  axis {i}  {axis.size:>6}  {axis.name}: {axis.meaning}")
        lines += ["", "Which filters read which input channel:", *self.mapping_lines()]
        where = (
            f"on a {_dims(self.input_size)} input (output {_dims(self.output_size)})"
            if self.input_size is not None
            else "per output position (give --input-size for totals)"
        )
        lines += ["", f"Parameters and MACs {where}:"]
        lines.append(f"  {'form':<12}{'weight shape(s)':<34}{'params':>12}{'MACs':>16}")
        for form in self.forms.values():
            shapes = " + ".join(_tuple(s) for s in form.weight_shapes)
            lines.append(f"  {form.name:<12}{shapes:<34}{form.params:>12,}{form.macs:>16,}")
        std, sep = self.forms["standard"], self.forms["separable"]
        lines.append(
            f"  {'separable / standard':<46}{sep.params / std.params:>11.3f}x{sep.macs / std.macs:>15.3f}x"
        )
        bias = "with biases" if self.bias else "without biases"
        lines.append(
            f"  (params {bias}; one MAC = one multiply-add; FLOP counters report 2 FLOPs per MAC)"
        )
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, path: str | Path, *, max_channels: int = 12) -> Path:
        """Draw input channels -> filters -> output channels, coloured by group, with the costs."""
        return _plot(self, Path(path), max_channels)


def explain(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...],
    *,
    groups: int = 1,
    input_size: int | tuple[int, ...] | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    bias: bool = True,
) -> Explanation:
    """Explain the conv ``in_channels -> out_channels`` with ``kernel_size`` and ``groups``.

    ``kernel_size``: an int (2d) or a tuple (its length is the rank). ``input_size``: spatial
    size of the input (int or tuple); without it MACs are per output position. Returns an
    :class:`Explanation` (print it, or read its fields).
    """
    rank = len(kernel_size) if isinstance(kernel_size, tuple | list) else 2
    k = check.int_tuple(kernel_size, rank, "kernel_size")
    check.conv_channels(in_channels, out_channels, groups)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {bias!r}")
    s, d = check.int_tuple(stride, rank, "stride"), check.int_tuple(dilation, rank, "dilation")
    p: tuple[int, ...] | str = (
        padding
        if isinstance(padding, str)
        else check.int_tuple(padding, rank, "padding", minimum=0)
    )
    if input_size is None:
        size, out = None, (1,) * rank
        comparison = _per_position(in_channels, out_channels, k, bias)
    else:
        size = check.int_tuple(input_size, rank, "input_size")
        comparison = cost.compare(in_channels, out_channels, k, size, s, p, d, bias=bias)
        out = comparison.output_size
    c, o, g = in_channels, out_channels, groups
    forms = {
        "standard": Form(
            "standard", ((o, c, *k),), comparison.standard.params, comparison.standard.macs
        ),
        "depthwise": Form(
            "depthwise", ((c, 1, *k),), comparison.depthwise.params, comparison.depthwise.macs
        ),
        "pointwise": Form(
            "pointwise",
            ((o, c, *(1,) * rank),),
            comparison.pointwise.params,
            comparison.pointwise.macs,
        ),
        "separable": Form(
            "separable",
            ((c, 1, *k), (o, c, *(1,) * rank)),
            comparison.separable.params,
            comparison.separable.macs,
        ),
    }
    if g > 1:
        forms["given"] = Form(
            f"groups={g}",
            ((o, c // g, *k),),
            cost.conv_params(c, o, k, groups=g, bias=bias),
            cost.conv_macs(c, o, k, out, groups=g),
        )
    axes = (
        Axis(o, "out_channels", "one filter per output channel; filter f writes output channel f"),
        Axis(
            c // g,
            "in_channels / groups",
            "the input channels each filter reads"
            + (
                " (one: depthwise)"
                if c // g == 1 and g > 1
                else f" ({c} in {g} groups of {c // g})"
                if g > 1
                else ""
            ),
        ),
        *(
            Axis(kk, f"kernel {name}", f"taps along the input's {name}")
            for kk, name in zip(k, _AXIS_NAMES[rank])
        ),
    )
    groups_map = tuple(
        Group(i, range(i * (o // g), (i + 1) * (o // g)), range(i * (c // g), (i + 1) * (c // g)))
        for i in range(g)
    )
    return Explanation(
        in_channels=c,
        out_channels=o,
        kernel_size=k,
        groups=g,
        input_size=size,
        output_size=tuple(out),
        stride=s,
        padding=p,
        dilation=d,
        bias=bias,
        weight_shape=(o, c // g, *k),
        axes=axes,
        groups_map=groups_map,
        forms=forms,
    )


def _per_position(c: int, o: int, k: tuple[int, ...], bias: bool) -> cost.Comparison:
    """Costs with a 1-position output (MACs per output position)."""
    rank = len(k)
    one = (1,) * rank
    dw = cost.Cost(cost.depthwise_params(c, k, bias=bias), cost.depthwise_macs(c, k, one))
    pw = cost.Cost(cost.pointwise_params(c, o, bias=bias), cost.pointwise_macs(c, o, one))
    return cost.Comparison(
        output_size=one,
        standard=cost.Cost(cost.conv_params(c, o, k, bias=bias), cost.conv_macs(c, o, k, one)),
        depthwise=dw,
        pointwise=pw,
        separable=cost.Cost(dw.params + pw.params, dw.macs + pw.macs),
    )


def _span(r: range) -> str:
    return str(r.start) if len(r) == 1 else f"{r.start}..{r.stop - 1}"


def _tuple(t: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, t)) + ")"


def _dims(t: tuple[int, ...] | None) -> str:
    return "x".join(map(str, t or ()))


def _shown(n: int, limit: int) -> list[int | None]:
    """Indices to draw out of ``n``: all when ``n <= limit``, else the first and last few with a gap (None)."""
    if n <= limit:
        return list(range(n))
    head = limit - 3
    return [*range(head), None, *range(n - 2, n)]


def _plot(e: Explanation, path: Path, max_channels: int) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    inputs, filters = _shown(e.in_channels, max_channels), _shown(e.out_channels, max_channels)
    rows = max(len(inputs), len(filters))
    height = max(4.5, 0.42 * rows + 3.2)
    fig = plt.figure(figsize=(11, height), dpi=110)
    ax = fig.add_axes((0.0, 0.16, 0.62, 0.76))
    table_ax = fig.add_axes((0.62, 0.05, 0.37, 0.85))
    table_ax.axis("off")
    ax.axis("off")
    colors = plt.get_cmap("tab10" if e.groups <= 10 else "tab20")

    def y_of(position: int, count: int) -> float:
        """Columns are centred on y=0, top to bottom."""
        return (count - 1) / 2 - position

    def color(group: int):
        return colors(group % colors.N)

    def box(x: float, y: float, text: str, face, width: float = 0.9) -> None:
        ax.add_patch(
            FancyBboxPatch(
                (x - width / 2, y - 0.32),
                width,
                0.64,
                boxstyle="round,pad=0.02",
                facecolor=face,
                edgecolor="black",
                linewidth=0.8,
                zorder=3,
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=8, zorder=4)

    x_in, x_f, x_out = 0.0, 2.6, 5.0
    in_y = {c: y_of(i, len(inputs)) for i, c in enumerate(inputs)}
    for i, c in enumerate(inputs):
        y = y_of(i, len(inputs))
        if c is None:
            ax.text(x_in, y, "⋮", ha="center", va="center", fontsize=14)
            continue
        group = c // (e.in_channels // e.groups)
        box(x_in, y, f"in {c}", (*color(group)[:3], 0.35))
    for i, f in enumerate(filters):
        y = y_of(i, len(filters))
        if f is None:
            ax.text(x_f, y, "⋮", ha="center", va="center", fontsize=14)
            ax.text(x_out, y, "⋮", ha="center", va="center", fontsize=14)
            continue
        group = f // (e.out_channels // e.groups)
        reads = e.inputs_of(f)
        box(x_f, y, f"filter {f}\nreads {_span(reads)}", (*color(group)[:3], 0.6), width=1.3)
        box(x_out, y, f"out {f}", (*color(group)[:3], 0.35))
        ax.annotate(
            "",
            (x_out - 0.45, y),
            (x_f + 0.65, y),
            arrowprops=dict(arrowstyle="->", color="black", lw=0.8),
            zorder=2,
        )
        for c in reads:
            if c in in_y:
                ax.plot(
                    [x_in + 0.45, x_f - 0.65],
                    [in_y[c], y],
                    color=color(group),
                    linewidth=1.0,
                    alpha=0.8 if e.groups > 1 else 0.35,
                    zorder=1,
                )
    top = (rows - 1) / 2 + 0.9
    for x, label in (
        (x_in, f"input channels\n({e.in_channels})"),
        (x_f, f"filters\n({e.out_channels})"),
        (x_out, f"output channels\n({e.out_channels})"),
    ):
        ax.text(x, top, label, ha="center", va="bottom", fontsize=10, fontweight="bold")
    ax.set_xlim(-0.8, 5.8)
    ax.set_ylim(-(rows - 1) / 2 - 0.6, top + 0.9)
    k = "x".join(map(str, e.kernel_size))
    title = f"Conv{e.rank}d {e.in_channels} -> {e.out_channels}, kernel {k}, groups={e.groups}: weight {_tuple(e.weight_shape)}"
    fig.suptitle(title, fontsize=12, fontweight="bold", x=0.02, ha="left")
    caption = "\n".join(line.strip() for line in e.mapping_lines(limit=4)[:1])
    caption += "\nEach filter writes the output channel of the same index; colours mark groups."
    if max(e.in_channels, e.out_channels) > max_channels:
        caption += (
            f"\nOnly {max_channels} channels per column are drawn; ⋮ marks the ones left out."
        )
    fig.text(0.02, 0.03, caption, fontsize=9, va="bottom", ha="left", wrap=True)

    where = (
        f"input {_dims(e.input_size)} -> output {_dims(e.output_size)}"
        if e.input_size
        else "MACs per output position"
    )
    cells = [[form.name, f"{form.params:,}", f"{form.macs:,}"] for form in e.forms.values()]
    std, sep = e.forms["standard"], e.forms["separable"]
    cells.append(
        ["separable/standard", f"{sep.params / std.params:.3f}x", f"{sep.macs / std.macs:.3f}x"]
    )
    table_ax.text(0.0, 0.97, f"Cost ({where})", fontsize=10, fontweight="bold", va="top")
    table = table_ax.table(
        cellText=cells,
        colLabels=["form", "params", "MACs"],
        loc="upper left",
        bbox=(0.0, 0.97 - 0.075 * (len(cells) + 1) - 0.04, 1.0, 0.075 * (len(cells) + 1)),
        colLoc="center",
        cellLoc="right",
        colWidths=[0.44, 0.26, 0.30],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (r, col), cell in table.get_celld().items():
        if col == 0:
            cell.set_text_props(ha="left")
        if r == 0:
            cell.set_text_props(fontweight="bold")
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
