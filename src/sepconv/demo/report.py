"""The demo's outputs: the rich table, ``demo-report.md``, ``demo-chart.png`` and ``demo-results.json``.

The table and the report format every number with the same functions, so the report holds
exactly the numbers printed. Files are written atomically (:mod:`sepconv._io`).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from sepconv._io import atomic_path, atomic_write_text
from sepconv.demo.pipeline import DemoResult, Row

REPORT = "demo-report.md"
CHART = "demo-chart.png"
RESULTS = "demo-results.json"
COLUMNS = (
    "model",
    "parameters",
    "MACs / image",
    "MACs vs original",
    "latency / batch",
    "test accuracy",
    "vs original",
)


def fmt_int(value: int) -> str:
    return f"{value:,}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def fmt_acc(accuracy: float) -> str:
    return f"{100 * accuracy:.2f}%"


def cells(result: DemoResult, row: Row) -> tuple[str, ...]:
    """The formatted cells of ``row``, in ``COLUMNS`` order."""
    original = result.original
    if row.key == "dense":
        ratio, delta = "1.00x", "-"
    else:
        ratio = f"{original.macs / row.macs:.2f}x fewer"
        delta = f"{100 * (row.accuracy - original.accuracy):+.2f} pt"
    return (
        row.model,
        fmt_int(row.params),
        fmt_int(row.macs),
        ratio,
        fmt_ms(row.latency_s),
        fmt_acc(row.accuracy),
        delta,
    )


def latency_note(result: DemoResult) -> str:
    c = result.config
    return (
        f"latency: median forward time of a batch of {c.latency_batch} test images, eval mode, "
        f"{c.threads} thread(s), {result.config.latency_repeat} runs"
    )


def rich_table(result: DemoResult):
    """The results as a ``rich.table.Table``."""
    from rich.table import Table

    c = result.config
    table = Table(
        title=f"sepconv demo -- digits 8x8, seed {c.seed}, rank {c.rank}, width {c.width}",
        caption=latency_note(result) + "; MACs: convolutions and linear layers, per image",
    )
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i > 0)
    for row in result.rows:
        style = "bold" if row.key == "distilled" else None
        table.add_row(*cells(result, row), style=style)
    return table


def verdict(result: DemoResult) -> str:
    """One line: whether the distilled network met the target, with the real numbers."""
    drop = result.accuracy_drop("distilled")
    factor = result.macs_reduction("distilled")
    met = "met" if result.target_met else "NOT met"
    if abs(drop) < 5e-3:
        change = "the same test accuracy"
    else:
        change = f"{abs(drop):.2f} points {'lower' if drop > 0 else 'higher'} test accuracy"
    return (
        f"Target (distilled separable network within 1 point of the original at >= 3x fewer MACs): {met} -- "
        f"{factor:.2f}x fewer MACs, {change} "
        f"({fmt_acc(result.row('distilled').accuracy)} vs {fmt_acc(result.original.accuracy)})."
    )


def markdown(result: DemoResult) -> str:
    """``demo-report.md``: settings, the table, the verdict and the conversion plan."""
    c = result.config
    lines = [
        "# sepconv demo report",
        "",
        "scikit-learn's handwritten digits (1,797 8x8 images, stratified 80/20 split by the seed): a "
        "standard CNN, converted to depthwise-separable form with `sepconv.to_separable` data-free, "
        "then with calibration data, then fine-tuned by distillation (`sepconv.distill`), and the same "
        "separable network trained from scratch.",
        "",
        f"- command: `sepconv demo --epochs {c.epochs} --distill-epochs {c.distill_epochs} "
        f"--rank {c.rank} --seed {c.seed} --width {c.width} --threads {c.threads}"
        f"{' --fast' if c.fast else ''}{' --distributed' if result.world_size > 1 else ''}`",
        f"- settings: CNN width {c.width}, {c.epochs} training epochs, {c.distill_epochs} distillation epochs, "
        f"batch {c.batch_size}, {c.calibration_samples} calibration images, {c.threads} thread(s) per process, "
        f"{result.world_size} process(es)",
        f"- machine: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        f"- {latency_note(result)}; MACs count convolutions and linear layers, per image",
        f"- total time: {result.elapsed_s:.1f} s",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|",
    ]
    for row in result.rows:
        lines.append("| " + " | ".join(cells(result, row)) + " |")
    lines += ["", verdict(result), "", f"Chart: `{CHART}` (test accuracy against MACs per image)."]
    if result.plan:
        lines += ["", "## Conversion plan (calibrated)", "", "```", result.plan.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def chart(result: DemoResult, path: Path) -> Path:
    """Write the accuracy-against-MACs chart to ``path`` (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    markers = {"dense": "s", "svd": "v", "calibrated": "^", "distilled": "*", "scratch": "o"}
    for row in result.rows:
        ax.scatter(
            row.macs,
            100 * row.accuracy,
            s=140 if row.key == "distilled" else 70,
            marker=markers.get(row.key, "o"),
            label=f"{row.model} ({fmt_acc(row.accuracy)})",
            zorder=3,
        )
    original = result.original
    ax.axhline(
        100 * original.accuracy - 1.0,
        color="grey",
        linestyle="--",
        linewidth=1,
        label="target: within 1 point of the original",
    )
    ax.axvline(
        original.macs / 3.0, color="grey", linestyle=":", linewidth=1, label="target: 3x fewer MACs"
    )
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"digits: accuracy against MACs (rank {result.config.rank}, seed {result.config.seed})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def results_json(result: DemoResult) -> str:
    """Machine-readable results (what the tests and the docs read)."""
    config = asdict(result.config)
    config["out"] = str(config["out"])
    return (
        json.dumps(
            {
                "config": config,
                "world_size": result.world_size,
                "elapsed_s": result.elapsed_s,
                "rows": [asdict(row) for row in result.rows],
                "target_met": result.target_met,
            },
            indent=2,
        )
        + "\n"
    )


def write_outputs(result: DemoResult) -> list[Path]:
    """Write report, chart and JSON into ``result.config.out``; returns their paths."""
    out = Path(result.config.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        atomic_write_text(out / REPORT, markdown(result)),
        chart(result, out / CHART),
        atomic_write_text(out / RESULTS, results_json(result)),
    ]
    result.files = files
    return files
