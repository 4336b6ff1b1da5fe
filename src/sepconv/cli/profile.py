"""``sepconv profile``, ``sepconv compare`` and ``sepconv peaks``.

``sepconv profile MODEL --input 1x3x224x224`` prints one row per layer (parameters, MACs,
memory traffic, arithmetic intensity, roofline bound, measured time); ``--md/--csv/--json
FILE`` write the report ("-" for stdout) and ``--plot FILE`` a roofline PNG.
``sepconv compare MODEL_A MODEL_B --input ...`` profiles both and prints their ratios.
``sepconv peaks`` prints (measuring once, then from the cache) this machine's peaks.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from sepconv.cli import CLIError, arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    profile = subparsers.add_parser(
        "profile",
        help="per-layer params, MACs, memory traffic, roofline and measured latency",
        description="Profile MODEL on a random input: one row per layer with parameters, MACs, bytes moved, "
        "arithmetic intensity, the roofline bound on this machine and the measured time.",
    )
    profile.add_argument(
        "model", metavar="MODEL", help="package.module:factory, file.py:factory or a saved file"
    )
    _common(profile)
    for flag, what in (("--md", "Markdown"), ("--csv", "CSV"), ("--json", "JSON")):
        profile.add_argument(
            flag, metavar="FILE", help=f"write the report as {what} ('-' for stdout)"
        )
    profile.add_argument("--plot", metavar="FILE", help="write a roofline PNG")
    profile.set_defaults(func=run_profile)

    compare = subparsers.add_parser(
        "compare",
        help="profile two models on the same input and compare them",
        description="Profile MODEL_A and MODEL_B (e.g. a dense model and its separable conversion) on the same "
        "input; print both reports and the ratios B / A.",
    )
    compare.add_argument("model_a", metavar="MODEL_A")
    compare.add_argument("model_b", metavar="MODEL_B")
    _common(compare)
    compare.add_argument(
        "--md", metavar="FILE", help="write the comparison as Markdown ('-' for stdout)"
    )
    compare.add_argument(
        "--json", metavar="FILE", help="write the comparison as JSON ('-' for stdout)"
    )
    compare.add_argument(
        "--plot", metavar="FILE", help="write both models' layers on one roofline PNG"
    )
    compare.set_defaults(func=run_compare)

    peaks = subparsers.add_parser(
        "peaks",
        help="this machine's GEMM FLOP/s and copy bandwidth (measured once, cached)",
        description="Print the peaks the roofline uses: FLOP/s of a large matrix product and bytes/s of a "
        "large tensor copy, per dtype and thread count. Measured in a few seconds, then cached.",
    )
    peaks.add_argument(
        "--dtype", action="append", help="dtype(s) to show (default float32); repeatable"
    )
    peaks.add_argument("--threads", type=int, help="thread count (default: torch's)")
    peaks.add_argument(
        "--refresh", action="store_true", help="measure again instead of reading the cache"
    )
    peaks.add_argument("--json", action="store_true", help="print JSON")
    peaks.set_defaults(func=run_peaks)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="SHAPE",
        help="example input shape such as 1x3x224x224; repeat for models with several inputs",
    )
    parser.add_argument(
        "--dtype", default="float32", help="float32 (default), float64, bfloat16 or float16"
    )
    parser.add_argument(
        "--backward", action="store_true", help="also time each layer's backward pass"
    )
    parser.add_argument(
        "--no-measure",
        dest="measure",
        action="store_false",
        help="only count (no timing): params, MACs, bytes and roofline bounds",
    )
    parser.add_argument(
        "--repeat",
        type=arguments.positive_int,
        default=10,
        help="timed runs; times are medians (default 10)",
    )
    parser.add_argument(
        "--warmup",
        type=arguments.non_negative_int,
        default=2,
        help="untimed runs first (default 2)",
    )
    parser.add_argument(
        "--threads", type=arguments.positive_int, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--weights", metavar="FILE", help="state dict to load into a factory's model"
    )
    parser.add_argument(
        "--trust", action="store_true", help="allow loading a pickled whole model (runs code)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite output files that exist")


def _prepare(args: argparse.Namespace):
    """Parse --dtype, --threads and --input; returns (dtype, inputs)."""
    import torch

    from sepconv.analysis.peaks import resolve_dtype

    try:
        dtype = resolve_dtype(args.dtype)
    except ValueError as error:
        raise CLIError(str(error)) from None
    try:
        shapes = [arguments.parse_shape(text) for text in args.input]
    except ValueError as error:
        raise CLIError(f"--input {error}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(shape, generator=generator).to(dtype) for shape in shapes)
    return dtype, inputs


def _load(spec: str, args: argparse.Namespace, dtype):
    from sepconv.cli.loading import load_model

    model = load_model(spec, trust=args.trust, weights=args.weights)
    try:
        return model.to(dtype)
    except (RuntimeError, TypeError) as error:
        raise CLIError(f"cannot cast {spec} to {dtype}: {str(error).splitlines()[0]}") from None


@contextlib.contextmanager
def _progress_bar(label: str) -> Iterator:
    """A rich progress bar on stderr (hidden when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(label, total=None)

        def update(description: str, done: int, total: int) -> None:
            progress.update(
                task, description=f"{label}: {description}", completed=done, total=total
            )

        yield update


def _profile(model, inputs, args, label: str):
    from sepconv.analysis import profile

    with _progress_bar(label) as update:
        report = profile(
            model,
            inputs,
            measure=args.measure,
            backward=args.backward,
            warmup=args.warmup,
            repeat=args.repeat,
            progress=update,
        )
    report.model = label
    return report


def _write(path: str | None, text: str, force: bool) -> None:
    if path is None:
        return
    if path == "-":
        sys.stdout.write(text)
        return
    from sepconv._io import atomic_write_text

    atomic_write_text(path, text, overwrite=force)
    print(f"wrote {path}", file=sys.stderr)


def _plot(target, path: str | None, force: bool) -> None:
    if path is None:
        return
    from pathlib import Path

    if Path(path).exists() and not force:
        raise FileExistsError(f"{path} already exists (use --force to replace it)")
    target.plot(path)
    print(f"wrote {path}", file=sys.stderr)


def _print(obj) -> None:
    from rich.console import Console

    Console(width=max(Console().width, 160)).print(obj)


def run_profile(args: argparse.Namespace) -> int:
    dtype, inputs = _prepare(args)
    model = _load(args.model, args, dtype)
    report = _profile(model, inputs, args, args.model)
    to_stdout = "-" in (args.md, args.csv, args.json)
    if not to_stdout:
        _print(report)
    _write(args.md, report.to_markdown(), args.force)
    _write(args.csv, report.to_csv(), args.force)
    _write(args.json, report.to_json() + "\n", args.force)
    _plot(report, args.plot, args.force)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    dtype, inputs = _prepare(args)
    model_a = _load(args.model_a, args, dtype)
    model_b = _load(args.model_b, args, dtype)
    report_a = _profile(model_a, inputs, args, args.model_a)
    report_b = _profile(model_b, inputs, args, args.model_b)
    comparison = report_a.compare(report_b, names=(args.model_a, args.model_b))
    if "-" not in (args.md, args.json):
        _print(report_a)
        _print(report_b)
        _print(comparison)
    _write(args.md, comparison.to_markdown(), args.force)
    _write(args.json, comparison.to_json() + "\n", args.force)
    _plot(comparison, args.plot, args.force)
    return 0


def run_peaks(args: argparse.Namespace) -> int:
    import json

    import torch

    from sepconv.analysis.peaks import cache_dir, machine_peaks, resolve_dtype

    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    try:
        dtypes = [resolve_dtype(d) for d in (args.dtype or ["float32"])]
    except ValueError as error:
        raise CLIError(str(error)) from None
    threads = args.threads or torch.get_num_threads()
    found = []
    with _progress_bar("measuring peaks") as update:
        for i, dtype in enumerate(dtypes):
            update(str(dtype).removeprefix("torch."), i, len(dtypes))
            found.append(machine_peaks(dtype, threads, refresh=args.refresh))
    if args.json:
        print(json.dumps([p.to_dict() for p in found], indent=2))
        return 0
    from rich.table import Table

    first = found[0]
    table = Table(
        title=f"{first.cpu}, torch {first.torch_version}, {threads} thread(s)",
        caption=f"cache: {cache_dir() / 'peaks.json'}",
        caption_justify="left",
    )
    for name in (
        "dtype",
        "torch.mm GFLOP/s",
        "3x3 conv GFLOP/s",
        "copy GB/s (read+write)",
        "ridge FLOP/B",
    ):
        table.add_column(name, justify="left" if name == "dtype" else "right")
    for p in found:
        table.add_row(
            p.dtype,
            f"{p.gemm_flops / 1e9:.1f}",
            f"{p.conv_flops / 1e9:.1f}",
            f"{p.copy_bandwidth / 1e9:.1f}",
            f"{p.ridge:.1f}",
        )
    _print(table)
    return 0
