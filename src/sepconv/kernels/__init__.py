"""Fast CPU kernels for depthwise and separable convolution (see docs/performance.md).

``SEPCONV_KERNELS=auto|on|off`` chooses: ``off`` always runs the PyTorch path.

The kernels are C++ (``csrc/sepconv_kernels.cpp`` and the parts it includes), built on
first use into a cache directory (or ahead of time by ``sepconv build-kernels``) and used
automatically by :class:`sepconv.SeparableConv1d`/``2d`` and the depthwise layers through
:mod:`sepconv.kernels.dispatch`. Without a compiler the package falls back to PyTorch and
warns once.
"""

from __future__ import annotations

from typing import Any


def build(verbose: bool = False, force: bool = False) -> str:
    """Compile (or find in the cache) the kernels and load them; returns the library path.

    Raises ``sepconv.kernels._build.BuildError`` when they cannot be built.
    """
    from sepconv.kernels import _build

    path = _build.build(verbose=verbose, force=force)
    if force:
        _build.reset()
    _build.load()
    return str(path)


def available() -> bool:
    """Whether the kernels are (or can be) built and loaded here; builds them if needed."""
    from sepconv.kernels import _build

    try:
        _build.load()
        return True
    except _build.BuildError:
        return False


def info() -> dict[str, Any]:
    """The setting, cache location, library path and whether the library is built."""
    import torch

    from sepconv.kernels import _build, dispatch

    path = _build.library_path()
    return {
        "SEPCONV_KERNELS": dispatch.mode(),
        "cache_dir": str(_build.cache_root()),
        "library": str(path),
        "built": path.exists(),
        "threads": torch.get_num_threads(),
        "bfloat16": dispatch._bf16_supported(),
        "tile_gemm": _build.tile_gemm_choice(),
        "prefetch": _build.prefetch_choice(),
        "vector_bits": _build.vector_bits() if path.exists() else None,
        "cpu": _cpu_model(_build.cpu_fingerprint()),
    }


def release_memory() -> None:
    """Free the memory the kernels keep between calls: the output pool's storages (those no
    tensor still uses) and the buffers kept by this thread and by the OpenMP workers of
    ``torch.get_num_threads()`` threads (up to a few padded planes a thread for large
    images). Later calls allocate them afresh. Buffers kept by kernel calls made from other
    Python threads stay with those threads."""
    from sepconv.kernels import _ops

    _ops.clear_pool()
    _ops.release_buffers()


def _cpu_model(fingerprint: str) -> str:
    for line in fingerprint.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


__all__ = ["available", "build", "info", "release_memory"]
