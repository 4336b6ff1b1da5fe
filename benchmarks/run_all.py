"""Run every ``benchmarks/bench_*.py`` in turn (what ``make bench`` does).

Each benchmark is its own script with a ``main(out_dir)``; results go to
``bench-results/`` (JSON and PNG) and tables to stdout. Ratios are measured
within one run, because these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. kernels")
    parser.add_argument("--out", default="bench-results", help="folder for JSON and PNG results")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        start = time.perf_counter()
        spec = importlib.util.spec_from_file_location(script.stem, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            module.main(out)
        except Exception as error:  # report and go on with the other benchmarks
            print(f"{script.stem} failed: {type(error).__name__}: {error}", file=sys.stderr)
            failed.append(script.stem)
        print(f"({script.stem}: {time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
