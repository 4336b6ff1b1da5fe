"""``sepconv convert``: make a model's dense convolutions depthwise-separable.

``sepconv convert MODEL [--rank R | --energy E | --budget B] [--calibrate N --input SHAPE] -o OUT``

MODEL is ``package.module:factory``, ``path/to/file.py:factory`` or a saved file (see
:mod:`sepconv.cli.loading`). The plan table goes to stdout; OUT receives the whole
converted module (``torch.save(model)``), written atomically. Loading OUT unpickles
classes (sepconv's and the model's), so it needs ``torch.load(OUT, weights_only=False)``
or ``--trust`` in other ``sepconv`` commands.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from sepconv.cli import CLIError, arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="replace dense convolutions by depthwise-separable ones",
        description=(
            "Replace a model's dense convolutions by depthwise-separable ones (per-input-channel SVD). "
            "Without --rank/--energy/--budget the conversion is exact. Prints the plan and writes the "
            "converted module (a full pickle: load it with torch.load(OUT, weights_only=False))."
        ),
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="package.module:factory, path/to/file.py:factory, or a saved .pt file",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--rank", type=arguments.positive_int, help="depth multiplier of every converted layer"
    )
    group.add_argument(
        "--energy",
        type=arguments.fraction,
        help="keep this share of squared singular values per layer",
    )
    group.add_argument(
        "--budget",
        type=arguments.fraction,
        help="target share of the model's convolution MACs (needs --input)",
    )
    parser.add_argument(
        "--calibrate",
        type=arguments.positive_int,
        metavar="N",
        help="refit pointwise stages on N random batches of --input (a weak stand-in for real "
        "data; use sepconv.to_separable(calibration=...) for that)",
    )
    parser.add_argument(
        "--input",
        type=arguments.shape,
        metavar="SHAPE",
        help="model input shape, batch included, e.g. 1x3x32x32 (MACs per sample; "
        "calibration batches)",
    )
    parser.add_argument("--weights", help="state dict to load into a factory-built MODEL")
    parser.add_argument(
        "--include",
        action="append",
        help="convert only layers matching this name/glob (repeatable)",
    )
    parser.add_argument(
        "--exclude", action="append", help="leave layers matching this name/glob dense (repeatable)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random calibration batches"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="file for the converted model"
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="allow MODEL to be a pickled module (unpickling can run code from the file)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sepconv._io import atomic_path
    from sepconv.cli.loading import load_model
    from sepconv.conversion import plan_separable, to_separable

    out = Path(args.output)
    if out.exists() and not args.force:
        raise CLIError(f"{out} already exists (use --force to replace it)")
    if out.is_dir():
        raise CLIError(f"{out} is a directory")
    if not out.parent.is_dir():
        raise CLIError(f"cannot write {out}: {out.parent} is not a directory")
    if args.calibrate and args.input is None:
        raise CLIError(
            "--calibrate needs --input SHAPE for the calibration batches (e.g. --input 8x3x32x32)"
        )
    if args.budget is not None and args.input is None:
        raise CLIError(
            "--budget needs --input SHAPE to count each layer's MACs (e.g. --input 1x3x224x224)"
        )
    model = load_model(args.model, trust=args.trust, weights=args.weights)
    calibration = None
    if args.calibrate:
        generator = torch.Generator().manual_seed(args.seed)
        param = next(iter(model.parameters()), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        calibration = [
            torch.randn(args.input, generator=generator).to(dtype) for _ in range(args.calibrate)
        ]
    plan = plan_separable(
        model,
        rank=args.rank,
        energy=args.energy,
        budget=args.budget,
        include=args.include,
        exclude=args.exclude,
        calibration=calibration,
        input_size=None if calibration else args.input,
    )
    converted = to_separable(model, plan, inplace=True)
    print(plan)
    try:
        with atomic_path(out, overwrite=args.force) as tmp:
            torch.save(converted, tmp)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise CLIError(
            f"cannot save the converted model: {type(error).__name__}: {error}"
        ) from None
    s = plan.summary()
    print(
        f"wrote {out}: {s['converted']} of {s['convs']} convs separable, MACs x{s['macs_ratio']:.3f}, "
        f"params x{s['params_ratio']:.3f} (load with torch.load(..., weights_only=False))"
    )
    return 0
