"""Build (once, cached) and load the C++ kernels of :mod:`sepconv.kernels`.

The source is one C++ translation unit with a plain C interface
(``csrc/sepconv_kernels.cpp`` and the headers it includes, one part of the kernels each),
compiled with ``torch.utils.cpp_extension.load`` (ninja) when ninja is installed, else
with a direct compiler call, into a cache directory keyed by the sources, the torch
version and this CPU's features (so ``-march=native`` code only runs on the CPU it was
built for). The library is then opened with :mod:`ctypes`.

Cache: ``$SEPCONV_CACHE_DIR`` or ``$XDG_CACHE_HOME/sepconv`` (default ``~/.cache/sepconv``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent / "csrc" / "sepconv_kernels.cpp"
#: Every file of the translation unit: the source and the parts it includes.
SOURCES = (SOURCE, *sorted(SOURCE.parent.glob("*.h")))
ABI_VERSION = 12

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None


class BuildError(RuntimeError):
    """The kernels could not be compiled or loaded."""


def cache_root() -> Path:
    """Where built kernels are cached."""
    explicit = os.environ.get("SEPCONV_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sepconv"


def cpu_fingerprint() -> str:
    """CPU model and feature flags (what ``-march=native`` depends on)."""
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key = line.split(":", 1)[0].strip()
                if key in (
                    "vendor_id",
                    "model name",
                    "flags",
                    "Features",
                    "CPU implementer",
                    "CPU part",
                ):
                    text += line
                if not line.strip() and text:
                    break  # first processor is enough
    except OSError:
        pass
    return text or platform.processor() or platform.machine()


def _native_ok(compiler: str) -> bool:
    """Whether the compiler accepts ``-march=native`` here."""
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return False
    try:
        result = subprocess.run(
            [compiler, "-march=native", "-x", "c++", "-E", "-", "-o", os.devnull],
            input=b"",
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def build_key(native: bool) -> str:
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(sys.version.encode())
    digest.update(str(native).encode())
    digest.update(cpu_fingerprint().encode())
    return digest.hexdigest()[:16]


def _flags(native: bool) -> tuple[list[str], list[str]]:
    cflags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-Wno-vla"]
    cflags.append("-march=native" if native else "-mtune=generic")
    torch_lib = str(Path(torch.__file__).resolve().parent / "lib")
    ldflags = ["-fopenmp", f"-L{torch_lib}", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
    return cflags, ldflags


def library_path(native: bool | None = None) -> Path:
    """Path of the shared library for this machine (built or not)."""
    compiler = _compiler()
    if native is None:
        native = bool(compiler) and _native_ok(compiler)
    key = build_key(native)
    return cache_root() / f"kernels-{key}" / f"sepconv_kernels_{key}.so"


def build(verbose: bool = False, force: bool = False, native: bool | None = None) -> Path:
    """Compile the kernels if they are not cached yet; return the library's path.

    ``native``: ``-march=native`` (True) or the portable ``-mtune=generic`` build (False);
    None: native where the compiler accepts it (what :func:`load` uses).
    Raises :class:`BuildError` when there is no working compiler or the build fails.
    """
    compiler = _compiler()
    if compiler is None:
        raise BuildError("no C++ compiler found (set CXX or install g++)")
    if native is None:
        native = _native_ok(compiler)
    path = library_path(native)
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cflags, ldflags = _flags(native)
    name = path.stem
    if shutil.which("ninja"):
        try:
            from torch.utils import cpp_extension

            os.environ.setdefault("CXX", compiler)
            cpp_extension.load(
                name=name,
                sources=[str(SOURCE)],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                build_directory=str(path.parent),
                verbose=verbose,
                is_python_module=False,
            )
        except Exception as error:  # fall through to the direct compile below
            if verbose:
                print(f"cpp_extension build failed ({error}); compiling directly", file=sys.stderr)
        if path.exists():
            return path
    # Direct compile into a temporary file, then an atomic rename (safe with concurrent builds).
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".so", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    command = [compiler, *cflags, "-fPIC", "-shared", str(SOURCE), "-o", str(tmp_path), *ldflags]
    if verbose:
        print(" ".join(command), file=sys.stderr)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        tmp_path.unlink(missing_ok=True)
        raise BuildError(f"compiler failed to run: {error}") from error
    if result.returncode != 0:
        tmp_path.unlink(missing_ok=True)
        raise BuildError(f"compilation failed:\n{result.stderr[-4000:]}")
    os.replace(tmp_path, path)
    return path


#: Which tile GEMMs use the kernels' own GEMM rather than MKL (the library's codes).
TILE_GEMM = {"blas": 0, "own": 1, "mixed": 2}


def tile_gemm_choice() -> str:
    """A key of :data:`TILE_GEMM`: ``SEPCONV_KERNELS_GEMM`` when it names one, else by CPU.

    On AMD CPUs MKL runs its AVX2 code and the own GEMM is about twice as fast: ``own``. On
    Intel CPUs MKL runs its AVX-512 code and, measured in the tile loop, was 1.0-1.1x faster
    on NCHW calls with many tiles and 1.2-2.3x on channels_last calls with few (batch 1,
    small planes), 0.6-0.7x on NCHW calls with few tiles: ``mixed`` picks by layout and tile
    count (docs/performance.md).
    """
    return _setting("SEPCONV_KERNELS_GEMM", TILE_GEMM, intel="mixed", other="own")


#: Whether the kernels bring their input into the cache ahead of reading it (library codes).
PREFETCH = {"off": 0, "on": 1}


def prefetch_choice() -> str:
    """A key of :data:`PREFETCH`: ``SEPCONV_KERNELS_PREFETCH`` when it names one, else by CPU.

    ``on``: software prefetches in the fused planar tiles, and touch passes (one load per
    cache line, just before the loops read the window) in the depthwise kernels and on large
    channels_last inputs. Measured on AMD Zen 5, where without it the depthwise loops read
    memory at 4-7 GB/s a thread. ``off`` on Intel CPUs, where it has not been measured
    (docs/performance.md, run L).
    """
    return _setting("SEPCONV_KERNELS_PREFETCH", PREFETCH, intel="off", other="on")


@functools.cache
def cpu_is_intel() -> bool:
    """Whether this CPU is Intel's (settings and ``auto``'s rules measured per vendor)."""
    return "GenuineIntel" in cpu_fingerprint()


def _setting(variable: str, choices: dict[str, int], intel: str, other: str) -> str:
    """The environment ``variable`` when it names a key of ``choices``, else the CPU's default."""
    value = os.environ.get(variable, "").strip().lower()
    if value in choices:
        return value
    return intel if cpu_is_intel() else other


def _declare(lib: ctypes.CDLL) -> None:
    p, i64p, c_int = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int
    lib.sepconv_abi_version.restype = c_int
    lib.sepconv_sep_forward.argtypes = [c_int, p, p, p, p, p, p, i64p, ctypes.POINTER(p)]
    lib.sepconv_sep_forward.restype = c_int
    lib.sepconv_pw_forward.argtypes = [p, p, p, p, p, p, p, p, i64p]
    lib.sepconv_pw_forward.restype = c_int
    lib.sepconv_dense_forward.argtypes = [p, p, p, p, p, p, p, p, i64p]
    lib.sepconv_dense_forward.restype = c_int
    lib.sepconv_dw_forward.argtypes = [c_int, p, p, p, p, i64p]
    lib.sepconv_dw_forward.restype = c_int
    lib.sepconv_run_program.argtypes = [p, ctypes.c_int64, p, p, p, p]
    lib.sepconv_run_program.restype = c_int
    lib.sepconv_backward.argtypes = [c_int, p, p, p, p, i64p, p, i64p, p, p, p, p, i64p, c_int]
    lib.sepconv_backward.restype = c_int
    lib.sepconv_set_own_gemm.argtypes = [c_int]
    lib.sepconv_set_own_gemm.restype = c_int
    lib.sepconv_set_reads.argtypes = [c_int]
    lib.sepconv_set_reads.restype = c_int
    lib.sepconv_vector_bits.restype = c_int
    lib.sepconv_touch_bytes.restype = ctypes.c_int64
    lib.sepconv_release_buffers.argtypes = [c_int]
    lib.sepconv_release_buffers.restype = None


def open_library(path: Path) -> ctypes.CDLL:
    """Open a built library, check its ABI and apply this CPU's settings.

    Raises :class:`BuildError` (wrong ABI) or :class:`OSError` (cannot be opened)."""
    lib = ctypes.CDLL(str(path))
    _declare(lib)
    if lib.sepconv_abi_version() != ABI_VERSION:
        raise BuildError(f"{path} has ABI {lib.sepconv_abi_version()}, expected {ABI_VERSION}")
    lib.sepconv_set_own_gemm(TILE_GEMM[tile_gemm_choice()])
    lib.sepconv_set_reads(PREFETCH[prefetch_choice()])
    return lib


def load() -> ctypes.CDLL:
    """The loaded library, building it on first use. Raises :class:`BuildError`."""
    global _lib, _error
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        if _error is not None:
            raise BuildError(_error)
        try:
            _lib = open_library(build())
        except (BuildError, OSError) as error:
            _error = str(error)
            raise BuildError(_error) from error
        return _lib


def vector_bits() -> int | None:
    """The vector width the library was compiled for, in bits: 512 (AVX-512), 256 (AVX2) or
    128. Loads the library; None when it cannot be built."""
    try:
        return int(load().sepconv_vector_bits())
    except BuildError:
        return None


def reset() -> None:
    """Forget the loaded library and any build error (for tests)."""
    global _lib, _error
    with _lock:
        _lib = None
        _error = None
