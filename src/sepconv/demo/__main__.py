"""``python -m sepconv.demo [options]``, also ``torchrun --nproc_per_node=2 -m sepconv.demo``."""

import os
import sys

from sepconv.cli import main
from sepconv.demo.distributed import under_torchrun

code = main(["demo", *sys.argv[1:]])
if under_torchrun():
    # A torchrun worker ends without the interpreter's teardown: gloo's threads outlive
    # destroy_process_group (the process group stays referenced from PyTorch's side), and
    # tearing them down at exit aborted a worker now and then ("terminate called without an
    # active exception": 2 of about 95 runs, 3 of 30 beside a busy process; docs/performance.md,
    # run Z).
    # Everything is written and closed by now; only the buffered streams need flushing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
