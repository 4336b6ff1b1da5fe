"""Running the demo on several processes: DistributedDataParallel over gloo (CPU).

Two ways in, same code path:

- ``torchrun --nproc_per_node=2 -m sepconv.demo [options]`` -- torchrun starts the
  processes and sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``;
  :func:`process_group` joins them (``env://``).
- ``sepconv demo --distributed [--nproc N]`` -- :func:`launch` starts ``N`` processes itself
  (``torch.multiprocessing``, spawn) that rendezvous through a temporary file, so no network
  port is needed.

Every process runs the whole pipeline; training and distillation split each global batch
over the processes; rank 0 measures, prints and writes the report.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch.distributed as dist


def under_torchrun() -> bool:
    """True when the environment describes a process group (torchrun sets these)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


@contextlib.contextmanager
def process_group(
    init_method: str = "env://", rank: int | None = None, world_size: int | None = None
) -> Iterator[None]:
    """Join (and afterwards leave) a gloo process group, unless one is already initialised."""
    if dist.is_initialized():
        yield
        return
    kwargs = {} if rank is None else {"rank": rank, "world_size": world_size}
    dist.init_process_group("gloo", init_method=init_method, **kwargs)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def exit_without_teardown(code: int) -> None:
    """End a worker process now, skipping the interpreter's teardown.

    gloo's threads outlive ``destroy_process_group`` (the process group stays referenced from
    PyTorch's side), and tearing them down at exit aborted a worker now and then ("terminate
    called without an active exception": 2 of about 95 torchrun runs, 3 of 30 beside a busy
    process; docs/performance.md, run Z; spawned workers in about 1 of 5 CI runs, run AC).
    Everything is written and closed by now; only the buffered streams need flushing (and a
    stream that cannot be flushed, a closed pipe, still ends the process).
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _worker(rank: int, world_size: int, init_file: str, target: Callable, args: tuple) -> None:
    with process_group(f"file://{init_file}", rank, world_size):
        target(*args)
    # Only after success: an exception goes back to torch.multiprocessing, which reports it.
    exit_without_teardown(0)


def launch(target: Callable, args: tuple, nproc: int = 2) -> None:
    """Run ``target(*args)`` in ``nproc`` new processes joined in one gloo process group.

    ``target`` must be importable (a module-level function) and ``args`` picklable. Raises
    RuntimeError if a process fails.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc!r}")
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="sepconv-ddp-") as tmp:
        init_file = str(Path(tmp) / "rendezvous")
        try:
            mp.start_processes(
                _worker,
                args=(nproc, init_file, target, args),
                nprocs=nproc,
                join=True,
                start_method="spawn",
            )
        except mp.ProcessRaisedException as error:
            raise RuntimeError(f"a demo process failed:\n{error}") from None
        except mp.ProcessExitedException as error:
            raise RuntimeError(f"a demo process exited early: {error}") from None


__all__ = ["exit_without_teardown", "launch", "process_group", "under_torchrun"]
