"""``sepconv explain``: a conv's weight layout, channel mapping and standard/depthwise/separable costs.

``sepconv explain --in-channels 10 --out-channels 32 --kernel-size 3 --input-size 50`` prints
the weight shape ``(32, 10, 3, 3)`` and what each axis means, which filters read which input
channel, and the parameters (2,912 standard, 452 separable) and MACs of each form;
``--png FILE`` draws the mapping.
"""

from __future__ import annotations

import argparse
import sys

from sepconv.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="weight layout, channel mapping and costs of a conv",
        description="Explain a convolution: the weight shape and what each axis means, which filters read "
        "which input channel, and the parameters and MACs of its standard, depthwise and separable forms.",
    )
    parser.add_argument("--in-channels", type=int, required=True, metavar="C")
    parser.add_argument("--out-channels", type=int, required=True, metavar="O")
    parser.add_argument(
        "--kernel-size",
        required=True,
        metavar="K",
        help="3, or 3x5 / 3x3x3 for other shapes and ranks",
    )
    parser.add_argument(
        "--groups", type=int, default=1, metavar="G", help="groups (in_channels for depthwise)"
    )
    parser.add_argument(
        "--input-size", metavar="H", help="spatial input size (50 or 50x40) for total MACs"
    )
    parser.add_argument("--stride", default="1", help="stride (default 1)")
    parser.add_argument(
        "--padding", default="0", help="padding: an int, 1x2, 'same' or 'valid' (default 0)"
    )
    parser.add_argument("--dilation", default="1", help="dilation (default 1)")
    parser.add_argument(
        "--no-bias", dest="bias", action="store_false", help="count parameters without biases"
    )
    parser.add_argument(
        "--png", metavar="FILE", help="draw input channels -> filters -> output channels"
    )
    parser.add_argument("--json", action="store_true", help="print the explanation as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite the PNG if it exists")
    parser.set_defaults(func=run)


def _size(
    text: str | None, flag: str, rank: int | None = None, minimum: int = 1
) -> int | tuple[int, ...] | None:
    if text is None:
        return None
    parts = text.strip().lower().split("x")
    if not all(p.strip().isdigit() for p in parts) or any(int(p) < minimum for p in parts):
        raise CLIError(
            f"{flag} {text!r} must be an int >= {minimum} or ints joined by 'x' (e.g. 3x3)"
        )
    values = tuple(int(p) for p in parts)
    if len(values) == 1:
        return values[0] if rank is None else values * rank
    if rank is not None and len(values) != rank:
        raise CLIError(f"{flag} {text!r} has {len(values)} values but the kernel has {rank} dims")
    return values


def run(args: argparse.Namespace) -> int:
    from sepconv.analysis.explain import explain

    kernel = _size(args.kernel_size, "--kernel-size")
    rank = len(kernel) if isinstance(kernel, tuple) else 2
    if isinstance(kernel, int):
        kernel = (kernel,) * rank
    padding = (
        args.padding
        if args.padding in ("same", "valid")
        else _size(args.padding, "--padding", rank, minimum=0)
    )
    explanation = explain(
        args.in_channels,
        args.out_channels,
        kernel,
        groups=args.groups,
        input_size=_size(args.input_size, "--input-size", rank),
        stride=_size(args.stride, "--stride", rank),
        padding=padding,  # type: ignore[arg-type]
        dilation=_size(args.dilation, "--dilation", rank),
        bias=args.bias,
    )
    if args.json:
        print(explanation.to_json())
    else:
        sys.stdout.write(explanation.to_text())
    if args.png:
        from pathlib import Path

        if Path(args.png).exists() and not args.force:
            raise FileExistsError(f"{args.png} already exists (use --force to replace it)")
        explanation.plot(args.png)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
