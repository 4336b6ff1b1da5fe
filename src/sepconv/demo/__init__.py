"""``sepconv demo``: convert a CNN trained on real data to depthwise-separable form, end to end.

On scikit-learn's bundled 8x8 digits: train a CNN, convert it with :func:`sepconv.to_separable`
(data-free, then calibrated), fine-tune it by distillation (:func:`sepconv.distill`), and
train the same separable network from scratch; print one table (parameters, MACs, latency,
test accuracy) and write ``demo-report.md``, ``demo-chart.png`` and ``demo-results.json``.
See ``docs/demo.md``.

``run_demo(DemoConfig(...))`` is what ``sepconv demo`` and ``python -m sepconv.demo`` call.
"""

from __future__ import annotations

import os
import sys

from sepconv.demo.pipeline import DemoConfig, DemoResult, Row, run_pipeline

__all__ = ["DemoConfig", "DemoResult", "Row", "run_demo"]


def run_demo(
    config: DemoConfig, *, distributed: bool = False, nproc: int = 2, console=None
) -> DemoResult | None:
    """Run the demo, print the table and write the report files.

    Runs in this process; or, when a process group is set up (``torchrun``) or
    ``distributed`` is true, with DistributedDataParallel over gloo (``distributed`` starts
    ``nproc`` processes itself unless under ``torchrun``). Returns the result in the process
    that reports (rank 0 of a group, or this process), else ``None``.
    """
    from sepconv.demo import distributed as ddp

    config = config.resolved()
    if ddp.under_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        with ddp.process_group():
            return _run_and_report(config, console)
    if distributed:
        ddp.launch(_run_and_report, (config, None), nproc=nproc)
        return None
    return _run_and_report(config, console)


def _run_and_report(config: DemoConfig, console=None) -> DemoResult | None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sepconv.demo import report
    from sepconv.models.digits import world

    rank, size = world()
    console = console or Console(file=sys.stdout, width=None if sys.stdout.isatty() else 132)
    if rank == 0:
        console.print(
            f"sepconv demo: digits 8x8, seed {config.seed}, rank {config.rank}, "
            f"{config.epochs} epochs (+{config.distill_epochs} distillation)"
            + (f", {size} processes (DistributedDataParallel, gloo)" if size > 1 else "")
        )
    progress = Progress(
        TextColumn("{task.description:<36}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
        disable=rank != 0,
    )
    with progress:
        result = run_pipeline(config, progress=progress)
    if result is None:
        return None
    files = report.write_outputs(result)
    console.print(report.rich_table(result))
    console.print(report.verdict(result))
    console.print(
        "wrote " + ", ".join(str(path) for path in files) + f" ({result.elapsed_s:.1f} s)"
    )
    return result
