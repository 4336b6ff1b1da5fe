"""The portable build (``-mtune=generic``: what a CPU gets where ``-march=native`` is refused)
equals the PyTorch path too.

Its code differs from the native build's (no AVX2/AVX-512 intrinsics, 64-byte generic vectors,
the own GEMM's generic micro-kernel), and a review once found it dropping GEMM output columns
8-15 that no test had run (docs/performance.md, run N). Here it is built, swapped in for the
native library and compared like the native one.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconv.kernels import _build
from tests.kernels.helpers import cases, env, output_fits, tile_gemm
from tests.kernels.test_backward import _compare_float32
from tests.kernels.test_forward import check_depthwise, check_separable


@pytest.fixture(scope="module")
def portable(kernels_built):
    """The portable library, opened beside the native one (built once, cached)."""
    try:
        return _build.open_library(_build.build(native=False))
    except (_build.BuildError, OSError) as error:  # pragma: no cover - no compiler
        pytest.skip(f"portable build unavailable: {error}")


@contextlib.contextmanager
def running(lib):
    """Send the kernel calls of the block to ``lib``."""
    old = _build.load()
    _build._lib = lib
    try:
        with env("on"):
            yield
    finally:
        _build._lib = old


def test_portable_build_has_no_native_vectors(portable):
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert portable.sepconv_vector_bits() == 128  # SSE2, the x86-64 baseline
    assert _build.library_path(native=False) != _build.library_path(native=True)


@pytest.mark.parametrize("gemm", ["own", "blas"])
@settings(max_examples=12, deadline=None)
@given(case=cases(max_size=24), outputs=st.integers(1, 40))
def test_portable_forward(portable, gemm, case, outputs):
    """Up to 120 outputs (group count x 40): several 16-column blocks of the own GEMM and a
    partial one, in planar and channels_last layouts."""
    case = replace(case, O=case.G * outputs)
    with running(portable), tile_gemm(gemm):
        check_separable(case)
        check_depthwise(case)


@settings(max_examples=8, deadline=None)
@given(case=cases(max_size=20))
def test_portable_gradients(portable, case):
    if output_fits(case):
        with running(portable):
            _compare_float32(case)
