"""``sepconv demo``: the end-to-end conversion demo on scikit-learn's digits (see docs/demo.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="train a CNN on the digits, convert it to separable form, compare (about a minute)",
        description=(
            "Train a CNN on scikit-learn's 8x8 digits; convert it with sepconv.to_separable data-free, "
            "then with calibration data; fine-tune it by distillation; train the same separable network "
            "from scratch. Prints one table and writes demo-report.md, demo-chart.png and "
            "demo-results.json to --out. Deterministic: the same numbers on every run."
        ),
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default 30; 3 with --fast)"
    )
    parser.add_argument(
        "--distill-epochs",
        type=int,
        default=None,
        help="distillation epochs (default 20; 2 with --fast)",
    )
    parser.add_argument(
        "--rank", type=int, default=2, help="rank (depth multiplier) of the conversion (default 2)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of split, init and data order (default 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("sepconv-demo"),
        help="output folder (default ./sepconv-demo)",
    )
    parser.add_argument(
        "--width", type=int, default=32, help="channels of the CNN's first conv (default 32)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (default 1)"
    )
    parser.add_argument(
        "--fast", action="store_true", help="a few epochs only (seconds; for tests)"
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="train with DistributedDataParallel (gloo) over --nproc processes; under torchrun this is automatic",
    )
    parser.add_argument(
        "--nproc", type=int, default=2, help="processes for --distributed (default 2)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sepconv.cli import CLIError
    from sepconv.demo import DemoConfig, run_demo

    if args.nproc < 1:
        raise CLIError(f"--nproc must be >= 1, got {args.nproc}")
    config = DemoConfig(
        epochs=args.epochs,
        distill_epochs=args.distill_epochs,
        rank=args.rank,
        seed=args.seed,
        out=args.out,
        fast=args.fast,
        width=args.width,
        threads=args.threads,
    )
    try:
        config = config.resolved()
    except ValueError as error:
        raise CLIError(str(error)) from None
    run_demo(config, distributed=args.distributed, nproc=args.nproc)
    return 0
