"""Fixtures for the analysis tests: fixed machine peaks, so that profiling never measures.

The real measurement is tested on its own in ``test_peaks.py`` with a temporary cache
directory. (``SEPCONV_CACHE_DIR`` is not redirected for the whole session: the compiled
kernels of :mod:`sepconv.kernels` are cached there too, and a fresh directory would mean
compiling them again.)
"""

from __future__ import annotations

import pytest

from sepconv.analysis import profiler
from sepconv.analysis.peaks import Peaks

FAKE_PEAKS = Peaks(
    gemm_flops=1e11,
    copy_bandwidth=1e10,
    dtype="float32",
    threads=1,
    cpu="test CPU",
    torch_version="test",
)


@pytest.fixture(autouse=True)
def _fixed_peaks(monkeypatch):
    """``profile(..., peaks=None)`` uses FAKE_PEAKS (100 GFLOP/s, 10 GB/s) instead of measuring."""
    monkeypatch.setattr(
        profiler, "machine_peaks", lambda dtype=None, threads=None, refresh=False: FAKE_PEAKS
    )


@pytest.fixture
def fake_peaks() -> Peaks:
    """100 GFLOP/s and 10 GB/s: ridge at 10 FLOP/byte."""
    return FAKE_PEAKS
