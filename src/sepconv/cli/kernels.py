"""``sepconv build-kernels`` and ``sepconv kernels-info``: the fast CPU kernels."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``build-kernels`` and ``kernels-info`` subcommands."""
    build = subparsers.add_parser(
        "build-kernels",
        help="compile the fast CPU kernels now (otherwise they are built on first use)",
        description=(
            "Compile sepconv's C++ depthwise/separable kernels into the cache directory "
            "($SEPCONV_CACHE_DIR, default ~/.cache/sepconv) so that the first forward does not "
            "wait for the compiler. Prints the library path."
        ),
    )
    build.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    build.add_argument(
        "--verbose", action="store_true", help="show the compiler command and output"
    )
    build.set_defaults(func=_build)
    info = subparsers.add_parser(
        "kernels-info",
        help="show the kernel setting, cache directory and build state",
        description="Print SEPCONV_KERNELS, the cache directory, the library path and whether it is built.",
    )
    info.set_defaults(func=_info)


def _build(args: argparse.Namespace) -> int:
    from sepconv import kernels
    from sepconv.kernels._build import BuildError

    try:
        path = kernels.build(verbose=args.verbose, force=args.force)
    except BuildError as error:
        raise RuntimeError(f"could not build the kernels: {str(error).strip()}") from error
    print(path)
    return 0


def _info(args: argparse.Namespace) -> int:
    from sepconv import kernels

    for key, value in kernels.info().items():
        print(f"{key}: {value}")
    return 0
