"""``python -m sepconv.demo [options]``, also ``torchrun --nproc_per_node=2 -m sepconv.demo``."""

import sys

from sepconv.cli import main

sys.exit(main(["demo", *sys.argv[1:]]))
