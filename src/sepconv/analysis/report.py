"""The result of :func:`sepconv.profile`: one row per layer, totals, and ways to show them.

``Report`` prints as a table (``print(report)``, via rich), and writes Markdown, CSV and JSON
(``to_markdown()``, ``to_csv()``, ``to_json()``) and a roofline PNG (``plot(path)``).
``report.compare(other)`` sets two reports side by side (a dense model against its
separable conversion).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from sepconv.analysis.peaks import Peaks

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Row:
    """One layer of a profiled model (all calls of it in one forward pass, summed).

    ``macs``: multiply-accumulates (2 FLOPs each); ``bytes``: lower bound on memory traffic
    (inputs + outputs + weights at their dtype); ``intensity``: FLOPs per byte;
    ``bound_ms``: the roofline's lower bound on time on this machine; ``forward_ms`` /
    ``backward_ms``: measured medians (None when not measured); ``share``: fraction of the
    layers' summed measured time (forward + backward), or of their summed ``bound_ms`` when
    nothing was measured.
    """

    name: str
    kind: str
    type: str
    input_shape: Shape
    output_shape: Shape
    params: int
    macs: int
    bytes: int
    intensity: float
    bound_ms: float | None
    forward_ms: float | None = None
    backward_ms: float | None = None
    share: float | None = None
    calls: int = 1

    @property
    def flops(self) -> int:
        """``2 * macs``."""
        return 2 * self.macs

    @property
    def time_ms(self) -> float | None:
        """Measured forward time plus backward time when measured."""
        if self.forward_ms is None:
            return None
        return self.forward_ms + (self.backward_ms or 0.0)

    @property
    def roof_fraction(self) -> float | None:
        """``bound_ms / forward_ms``: how close the forward pass came to the roofline (1 = on it)."""
        if self.bound_ms is None or not self.forward_ms:
            return None
        return self.bound_ms / self.forward_ms


@dataclass
class Report:
    """Per-layer costs and timings of one model on one example input.

    Totals (``total_params``, ``total_macs``, ``total_bytes``, ``total_bound_ms``,
    ``total_forward_ms``, ``total_backward_ms``) are sums over ``rows``. ``forward_ms`` and
    ``backward_ms`` are the medians of the whole model's passes, measured without hooks;
    they differ from the row sums by the work the model does outside its layers (residual
    additions, reshapes) and by the cost of the timing hooks.
    """

    rows: list[Row]
    model: str
    input_shapes: list[Shape]
    dtype: str
    threads: int
    peaks: Peaks | None
    forward_ms: float | None = None
    backward_ms: float | None = None
    model_params: int = 0
    repeat: int = 0
    warmup: int = 0
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ totals
    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def total_bound_ms(self) -> float | None:
        return None if self.peaks is None else sum(r.bound_ms or 0.0 for r in self.rows)

    @property
    def total_forward_ms(self) -> float | None:
        return None if not self.measured else sum(r.forward_ms or 0.0 for r in self.rows)

    @property
    def total_backward_ms(self) -> float | None:
        return None if self.backward_ms is None else sum(r.backward_ms or 0.0 for r in self.rows)

    @property
    def intensity(self) -> float:
        """FLOPs per byte of the whole model (total FLOPs over total bytes)."""
        return self.total_flops / self.total_bytes if self.total_bytes else 0.0

    @property
    def measured(self) -> bool:
        return self.forward_ms is not None

    def by_kind(self) -> dict[str, dict[str, float]]:
        """Totals per layer kind: ``{kind: {"layers", "params", "macs", "bytes", "forward_ms", ...}}``."""
        kinds: dict[str, dict[str, float]] = {}
        for row in self.rows:
            k = kinds.setdefault(
                row.kind,
                dict.fromkeys(
                    ("layers", "params", "macs", "bytes", "bound_ms", "forward_ms", "backward_ms"),
                    0,
                ),
            )
            k["layers"] += 1
            for name in ("params", "macs", "bytes", "bound_ms", "forward_ms", "backward_ms"):
                k[name] += getattr(row, name) or 0
        return kinds

    def compare(self, other: Report, names: tuple[str, str] | None = None) -> Comparison:
        """This report (``a``) against ``other`` (``b``): totals, ratios ``b / a`` and matched layers."""
        return Comparison(self, other, names or (self.model, other.model))

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict:
        """Everything in the report as plain JSON-able values."""
        return {
            "model": self.model,
            "input_shapes": [list(s) for s in self.input_shapes],
            "dtype": self.dtype,
            "threads": self.threads,
            "repeat": self.repeat,
            "warmup": self.warmup,
            "peaks": None if self.peaks is None else self.peaks.to_dict(),
            "totals": {
                "params": self.total_params,
                "model_params": self.model_params,
                "macs": self.total_macs,
                "flops": self.total_flops,
                "bytes": self.total_bytes,
                "intensity": self.intensity,
                "bound_ms": self.total_bound_ms,
                "layers_forward_ms": self.total_forward_ms,
                "layers_backward_ms": self.total_backward_ms,
                "forward_ms": self.forward_ms,
                "backward_ms": self.backward_ms,
            },
            "rows": [_row_dict(r) for r in self.rows],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        """One line per row with raw numbers (shapes as ``1x3x224x224``), then a ``TOTAL`` line."""
        buffer = io.StringIO()
        names = [f.name for f in fields(Row)]
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        for row in self.rows:
            writer.writerow([_csv_value(v) for v in _row_dict(row).values()])
        total = {n: "" for n in names}
        total.update(
            name="TOTAL",
            params=self.total_params,
            macs=self.total_macs,
            bytes=self.total_bytes,
            intensity=_csv_value(self.intensity),
            bound_ms=_csv_value(self.total_bound_ms),
            forward_ms=_csv_value(self.total_forward_ms),
            backward_ms=_csv_value(self.total_backward_ms),
            share=_csv_value(1.0 if self.rows else 0.0),
            calls=sum(r.calls for r in self.rows),
        )
        writer.writerow(total.values())
        return buffer.getvalue()

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table with a header line and a totals line."""
        header, rows, total = self._table()
        lines = [
            f"**{self.model}** on {_shapes(self.input_shapes)} ({self.dtype}, {self.threads} thread(s))",
            "",
        ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i < 4 else "---:" for i in range(len(header))) + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in [*rows, total]]
        lines += ["", *self._summary_lines()]
        return "\n".join(lines) + "\n"

    def __rich__(self):
        from rich.table import Table

        header, rows, total = self._table()
        table = Table(
            title=f"{self.model} on {_shapes(self.input_shapes)} ({self.dtype}, {self.threads} thread(s))",
            caption="\n".join(self._summary_lines()),
            caption_justify="left",
            show_footer=False,
        )
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i < 4 else "right", no_wrap=i == 0)
        for cells in rows:
            table.add_row(*cells)
        table.add_section()
        table.add_row(*total, style="bold")
        return table

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(file=io.StringIO(), width=200, color_system=None, legacy_windows=False)
        console.print(self)
        return console.file.getvalue()  # type: ignore[attr-defined]

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Write a roofline PNG: each layer a point at (FLOPs/byte, achieved FLOP/s)."""
        from sepconv.analysis.plotting import plot_roofline

        return plot_roofline([self], path, title=title)

    # ------------------------------------------------------------------ helpers
    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        header = [
            "layer",
            "kind",
            "input",
            "output",
            "params",
            "MACs",
            "bytes",
            "FLOP/B",
            "bound ms",
        ]
        if self.measured:
            header += ["fwd ms"]
        if self.backward_ms is not None:
            header += ["bwd ms"]
        if self.measured:
            header += ["roof %"]
        header += ["share", "limit"]
        ridge = self.peaks.ridge if self.peaks else None
        rows = []
        for r in self.rows:
            cells = [
                r.name + (f" (x{r.calls})" if r.calls > 1 else ""),
                r.kind,
                _shape(r.input_shape),
                _shape(r.output_shape),
                f"{r.params:,}",
                si(r.macs),
                si(r.bytes, "B"),
                f"{r.intensity:.1f}",
                _ms(r.bound_ms),
            ]
            if self.measured:
                cells.append(_ms(r.forward_ms))
            if self.backward_ms is not None:
                cells.append(_ms(r.backward_ms))
            if self.measured:
                cells.append(_pct(r.roof_fraction))
            cells += [_pct(r.share), _limit(r.intensity, ridge)]
            rows.append(cells)
        total = [
            "total",
            "",
            "",
            "",
            f"{self.total_params:,}",
            si(self.total_macs),
            si(self.total_bytes, "B"),
            f"{self.intensity:.1f}",
            _ms(self.total_bound_ms),
        ]
        if self.measured:
            total.append(_ms(self.total_forward_ms))
        if self.backward_ms is not None:
            total.append(_ms(self.total_backward_ms))
        if self.measured:
            fraction = (
                (self.total_bound_ms or 0.0) / self.total_forward_ms
                if self.total_forward_ms and self.peaks
                else None
            )
            total.append(_pct(fraction))
        total += [_pct(1.0 if self.rows else None), ""]
        return header, rows, total

    def _summary_lines(self) -> list[str]:
        lines = []
        if self.peaks is not None:
            lines.append(
                f"Machine: {self.peaks.compute_flops / 1e9:.1f} GFLOP/s compute (torch.mm "
                f"{self.peaks.gemm_flops / 1e9:.0f}, 3x3 conv {self.peaks.conv_flops / 1e9:.0f}), "
                f"{self.peaks.copy_bandwidth / 1e9:.1f} GB/s "
                f"copy ({self.peaks.dtype}, {self.peaks.threads} thread(s)); ridge {self.peaks.ridge:.1f} FLOP/B: "
                f"layers below it are limited by memory traffic, above it by arithmetic."
            )
        if self.measured:
            line = f"Whole model: forward {self.forward_ms:.3f} ms"
            if self.backward_ms is not None:
                line += f", backward {self.backward_ms:.3f} ms"
            line += f" (medians of {self.repeat} runs; layer rows sum to {self.total_forward_ms:.3f} ms forward)."
            lines.append(line)
        if self.model_params != self.total_params:
            lines.append(
                f"{self.model_params - self.total_params:,} of the model's {self.model_params:,} parameters "
                f"belong to no profiled layer."
            )
        lines += self.notes
        return lines


@dataclass
class Comparison:
    """Two reports side by side; ratios are ``b / a`` (e.g. separable / dense)."""

    a: Report
    b: Report
    names: tuple[str, str]

    METRICS = (
        ("params", "total_params"),
        ("MACs", "total_macs"),
        ("bytes", "total_bytes"),
        ("bound ms", "total_bound_ms"),
        ("forward ms", "forward_ms"),
        ("backward ms", "backward_ms"),
    )

    def totals(self) -> list[tuple[str, float | None, float | None, float | None]]:
        """``(metric, a, b, b / a)`` for each metric both reports have."""
        out = []
        for label, attr in self.METRICS:
            va, vb = getattr(self.a, attr), getattr(self.b, attr)
            if va is None and vb is None:
                continue
            out.append((label, va, vb, vb / va if va and vb is not None else None))
        return out

    def layers(self) -> list[tuple[Row, Row]]:
        """Rows of the same name in both reports whose MACs or kind differ (the converted layers)."""
        other = {r.name: r for r in self.b.rows}
        return [
            (r, other[r.name])
            for r in self.a.rows
            if r.name in other and (r.macs != other[r.name].macs or r.kind != other[r.name].kind)
        ]

    def ratio(self, attr: str) -> float | None:
        """``getattr(b, attr) / getattr(a, attr)``, e.g. ``ratio("forward_ms")``."""
        va, vb = getattr(self.a, attr), getattr(self.b, attr)
        return vb / va if va and vb is not None else None

    def to_dict(self) -> dict:
        return {
            "a": self.names[0],
            "b": self.names[1],
            "totals": [
                {"metric": m, "a": va, "b": vb, "b_over_a": r} for m, va, vb, r in self.totals()
            ],
            "layers": [
                {
                    "name": ra.name,
                    "kind_a": ra.kind,
                    "kind_b": rb.kind,
                    "macs_a": ra.macs,
                    "macs_b": rb.macs,
                    "forward_ms_a": ra.forward_ms,
                    "forward_ms_b": rb.forward_ms,
                    "bound_ms_a": ra.bound_ms,
                    "bound_ms_b": rb.bound_ms,
                }
                for ra, rb in self.layers()
            ],
            "reports": [self.a.to_dict(), self.b.to_dict()],
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        a, b = self.names
        totals = [[m, _num(va, m), _num(vb, m), _ratio(r)] for m, va, vb, r in self.totals()]
        tables = [("Totals", ["metric", a, b, "b / a"], totals)]
        matched = self.layers()
        if matched:
            cells = []
            for ra, rb in matched:
                fwd = (
                    rb.forward_ms / ra.forward_ms
                    if ra.forward_ms and rb.forward_ms is not None
                    else None
                )
                cells.append(
                    [
                        ra.name,
                        f"{ra.kind} -> {rb.kind}",
                        si(ra.macs),
                        si(rb.macs),
                        _ratio(rb.macs / ra.macs if ra.macs else None),
                        _ms(ra.forward_ms),
                        _ms(rb.forward_ms),
                        _ratio(fwd),
                        _limit(ra.intensity, self.a.peaks.ridge if self.a.peaks else None)
                        + " -> "
                        + _limit(rb.intensity, self.b.peaks.ridge if self.b.peaks else None),
                    ]
                )
            tables.append(
                (
                    "Layers that differ",
                    [
                        "layer",
                        "kind",
                        "MACs a",
                        "MACs b",
                        "MACs b/a",
                        "fwd ms a",
                        "fwd ms b",
                        "time b/a",
                        "limit",
                    ],
                    cells,
                )
            )
        return tables

    def to_markdown(self) -> str:
        lines = [f"**{self.names[0]}** (a) against **{self.names[1]}** (b)", ""]
        for title, header, cells in self._tables():
            lines += [
                f"{title}:",
                "",
                "| " + " | ".join(header) + " |",
                "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
            ]
            lines += ["| " + " | ".join(c) + " |" for c in cells]
            lines.append("")
        return "\n".join(lines)

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        tables = []
        for title, header, cells in self._tables():
            table = Table(title=f"{title}: {self.names[0]} (a) vs {self.names[1]} (b)")
            for i, name in enumerate(header):
                table.add_column(name, justify="left" if i == 0 else "right")
            for c in cells:
                table.add_row(*c)
            tables.append(table)
        return Group(*tables)

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(file=io.StringIO(), width=200, color_system=None)
        console.print(self)
        return console.file.getvalue()  # type: ignore[attr-defined]

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Both models' layers on one roofline PNG."""
        from sepconv.analysis.plotting import plot_roofline

        return plot_roofline([self.a, self.b], path, title=title, labels=list(self.names))


# ---------------------------------------------------------------------- formatting helpers
def si(value: float | None, unit: str = "") -> str:
    """``1234567 -> '1.23 M'``; exact below 1000."""
    if value is None:
        return "-"
    if abs(value) < 1000:
        return f"{value:,.0f}{' ' + unit if unit else ''}"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return str(value)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}x"


def _num(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric.endswith(" ms"):
        return _ms(value)
    return f"{value:,}" if metric == "params" else si(value, "B" if metric == "bytes" else "")


def _limit(intensity: float, ridge: float | None) -> str:
    if ridge is None:
        return "-"
    return "memory" if intensity < ridge else "compute"


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape) if shape else "-"


def _shapes(shapes: Sequence[Shape]) -> str:
    return ", ".join(_shape(s) for s in shapes)


def _row_dict(row: Row) -> dict:
    d = asdict(row)
    d["input_shape"], d["output_shape"] = list(row.input_shape), list(row.output_shape)
    return d


def _csv_value(value: object) -> object:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value
