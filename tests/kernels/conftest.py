"""Fixtures of the kernel tests: the kernels are built once (cached) and the env var restored."""

from __future__ import annotations

import pytest

from sepconv.kernels import _build


@pytest.fixture(scope="session")
def kernels_built() -> None:
    """Build (or load from the cache) the C++ kernels; skip if this machine cannot."""
    try:
        _build.load()
    except _build.BuildError as error:  # pragma: no cover - machines without a compiler
        pytest.skip(f"C++ kernels unavailable: {error}")


@pytest.fixture
def kernels_on(monkeypatch, kernels_built):
    monkeypatch.setenv("SEPCONV_KERNELS", "on")


@pytest.fixture
def kernels_off(monkeypatch):
    monkeypatch.setenv("SEPCONV_KERNELS", "off")


@pytest.fixture(autouse=True)
def fresh_decisions():
    """Each test starts with no remembered problems (``auto``'s measured choices)."""
    from sepconv.kernels import dispatch

    dispatch._calls.clear()
    yield
    dispatch._calls.clear()
