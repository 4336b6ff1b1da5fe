"""``python -m sepconv.demo [options]``, also ``torchrun --nproc_per_node=2 -m sepconv.demo``."""

import sys

from sepconv.cli import main
from sepconv.demo.distributed import exit_without_teardown, under_torchrun

code = main(["demo", *sys.argv[1:]])
if under_torchrun():
    exit_without_teardown(code)  # see its docstring: gloo's threads abort a teardown now and then
sys.exit(code)
