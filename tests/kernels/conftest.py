"""Fixtures of the kernel tests (``kernels_built``/``kernels_on``/``kernels_off``: tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def fresh_decisions():
    """Each test starts with no remembered problems (``auto``'s measured choices)."""
    from sepconv.kernels import dispatch

    dispatch._calls.clear()
    yield
    dispatch._calls.clear()
