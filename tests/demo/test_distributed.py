"""``sepconv.demo.distributed.launch``: its workers' output survives their exit, and a worker's
error comes back to the caller."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sepconv.demo.distributed import launch


def test_workers_output_is_flushed_before_they_exit(capfd, tmp_path, monkeypatch):
    # (a worker ends with os._exit: a line left in its buffered stdout would be lost without
    # the flush before it; buffered, that is: not under PYTHONUNBUFFERED, which the workers
    # would inherit)
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    launch(print, ("a line from a worker", "without a newline at the end"), nproc=2)
    assert capfd.readouterr().out.count("a line from a worker") == 2
    launch(Path.touch, (tmp_path / "touched",), nproc=2)
    assert (tmp_path / "touched").is_file()


def test_a_worker_error_comes_back(tmp_path):
    with pytest.raises(RuntimeError, match="(?s)a demo process failed.*FileNotFoundError"):
        launch(os.mkdir, (str(tmp_path / "missing" / "child"),), nproc=2)


def test_nproc_must_be_positive():
    with pytest.raises(ValueError, match="nproc must be >= 1, got 0"):
        launch(print, (), nproc=0)
