"""This machine's peaks: GEMM FLOP/s and memory copy bandwidth, measured once and cached.

A roofline needs two numbers per dtype and thread count:

- the compute peak ``compute_flops``: the larger of ``gemm_flops``, the FLOP/s of a large
  ``torch.mm`` (``2*n^3`` FLOPs for ``n x n`` operands), and ``conv_flops``, the FLOP/s of a
  large dense 3x3 ``conv2d`` (direct-convolution FLOPs). Both are measured because PyTorch's
  CPU back ends differ: on the AMD EPYC these docs were measured on, ``torch.mm`` (MKL)
  reached about 200 GFLOP/s and oneDNN's 3x3 convolution about 380, so a roofline built on
  ``torch.mm`` alone would put dense convolutions above their "peak";
- ``copy_bandwidth``: bytes/s of a large tensor copy ``dst.copy_(src)``, counting the bytes
  read *and* written, on buffers several times the size of the last-level cache.

:func:`machine_peaks` measures both in a few seconds and caches them on disk, keyed by CPU
model, dtype, thread count and torch version, in ``$SEPCONV_CACHE_DIR/peaks.json``
(default ``$XDG_CACHE_HOME/sepconv`` or ``~/.cache/sepconv``). ``refresh=True`` measures
again. The ridge point ``compute_flops / copy_bandwidth`` (FLOPs per byte) separates layers
bound by memory traffic (left of it) from layers bound by arithmetic (right of it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sepconv._io import atomic_write_text

CACHE_ENV = "SEPCONV_CACHE_DIR"
CACHE_FILE = "peaks.json"
_FORMAT = 2

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "f32": "float32",
    "fp64": "float64",
    "double": "float64",
    "f64": "float64",
    "fp16": "float16",
    "half": "float16",
    "f16": "float16",
    "bf16": "bfloat16",
}

_lock = threading.Lock()
_memo: dict[str, Peaks] = {}


@dataclass(frozen=True)
class Peaks:
    """Measured peaks of this machine for one dtype and thread count.

    ``gemm_flops`` (large ``torch.mm``) and ``conv_flops`` (large dense 3x3 conv) in FLOP/s,
    ``copy_bandwidth`` in bytes/s (read + write). The roofline uses ``compute_flops``, the
    larger of the two FLOP rates.
    """

    gemm_flops: float
    copy_bandwidth: float
    dtype: str
    threads: int
    cpu: str
    torch_version: str
    conv_flops: float = 0.0
    measured_at: float = 0.0
    gemm_size: int = 0
    copy_bytes: int = 0

    @property
    def compute_flops(self) -> float:
        """The roofline's compute limit: ``max(gemm_flops, conv_flops)``."""
        return max(self.gemm_flops, self.conv_flops)

    @property
    def ridge(self) -> float:
        """FLOPs per byte at which the roofline's two limits meet."""
        return self.compute_flops / self.copy_bandwidth

    def bound_seconds(self, flops: float, nbytes: float) -> float:
        """Roofline lower bound on the time to do ``flops`` FLOPs moving ``nbytes`` bytes."""
        return max(flops / self.compute_flops, nbytes / self.copy_bandwidth)

    def attainable_flops(self, intensity: float) -> float:
        """``min(compute_flops, intensity * copy_bandwidth)``: the roof at ``intensity`` FLOPs/byte."""
        return min(self.compute_flops, intensity * self.copy_bandwidth)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.cpu} | torch {self.torch_version} | {self.dtype} | {self.threads} thread(s): "
            f"GEMM {self.gemm_flops / 1e9:.1f} GFLOP/s, conv {self.conv_flops / 1e9:.1f} GFLOP/s, "
            f"copy {self.copy_bandwidth / 1e9:.1f} GB/s, "
            f"ridge {self.ridge:.1f} FLOP/byte"
        )


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating dtype from a ``torch.dtype`` or a name (``"float32"``, ``"bf16"``...).

    Raises ValueError for an unknown name or a dtype that ``torch.mm`` cannot run on this CPU.
    """
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        key = _ALIASES.get(key, key)
        if key not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
        resolved = _DTYPES[key]
    elif isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        raise TypeError(f"dtype must be a torch.dtype or a name, got {dtype!r}")
    if resolved not in _DTYPES.values():
        raise ValueError(
            f"dtype {resolved} is not a floating dtype sepconv can profile; use one of {', '.join(_DTYPES)}"
        )
    try:
        a = torch.ones(4, 4, dtype=resolved)
        torch.mm(a, a)
        torch.nn.functional.conv2d(
            torch.ones(1, 2, 4, 4, dtype=resolved), torch.ones(2, 1, 3, 3, dtype=resolved), groups=2
        )
    except (RuntimeError, NotImplementedError) as error:
        raise ValueError(
            f"dtype {_name(resolved)} is not supported on this machine: {str(error).splitlines()[0]}"
        ) from None
    return resolved


def cache_dir() -> Path:
    """Where sepconv caches measurements: ``$SEPCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/sepconv``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sepconv"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                name = line.split(":", 1)[1].strip()
                if name:
                    return f"{name} ({os.cpu_count()} CPUs)"
    return f"{platform.processor() or platform.machine() or 'unknown CPU'} ({os.cpu_count()} CPUs)"


def machine_peaks(
    dtype: torch.dtype | str = torch.float32, threads: int | None = None, refresh: bool = False
) -> Peaks:
    """GEMM FLOP/s and copy bandwidth of this machine at ``dtype`` with ``threads`` threads.

    ``threads`` defaults to ``torch.get_num_threads()``. The first call for a (CPU, dtype,
    threads, torch version) measures for a few seconds and caches the result on disk (see the
    module doc); later calls, in this process or another, read the cache. ``refresh=True``
    measures again and replaces the cached entry.

    Example::

        peaks = machine_peaks(torch.float32)
        peaks.gemm_flops / 1e9, peaks.copy_bandwidth / 1e9   # GFLOP/s, GB/s
    """
    resolved = resolve_dtype(dtype)
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    key = _key(cpu_model(), _name(resolved), threads)
    path = cache_dir() / CACHE_FILE
    with _lock:
        memo_key = f"{path}|{key}"
        if not refresh:
            if memo_key in _memo:
                return _memo[memo_key]
            cached = _read_cache(path).get(key)
            if cached is not None:
                with contextlib.suppress(TypeError, ValueError):
                    peaks = Peaks(**cached)
                    if peaks.gemm_flops > 0 and peaks.copy_bandwidth > 0:
                        _memo[memo_key] = peaks
                        return peaks
        peaks = measure_peaks(resolved, threads)
        _write_cache(path, key, peaks)
        _memo[memo_key] = peaks
        return peaks


def measure_peaks(dtype: torch.dtype = torch.float32, threads: int | None = None) -> Peaks:
    """Measure (no cache) the GEMM and conv FLOP/s and the copy bandwidth; a few seconds."""
    threads = torch.get_num_threads() if threads is None else threads
    with _num_threads(threads), torch.inference_mode():
        flops, n = _gemm_flops(dtype)
        conv = _conv_flops(dtype)
        bandwidth, nbytes = _copy_bandwidth(dtype)
    return Peaks(
        gemm_flops=flops,
        conv_flops=conv,
        copy_bandwidth=bandwidth,
        dtype=_name(dtype),
        threads=threads,
        cpu=cpu_model(),
        torch_version=torch.__version__,
        measured_at=time.time(),
        gemm_size=n,
        copy_bytes=nbytes,
    )


def _gemm_flops(dtype: torch.dtype, budget_s: float = 1.2) -> tuple[float, int]:
    """Best FLOP/s of ``n x n @ n x n`` for growing ``n`` until one product takes ~50 ms."""
    best, n, spent = 0.0, 256, 0.0
    size = n
    while True:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        out = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up: packing buffers, thread pool
        seconds = _time(
            lambda a=a, b=b, out=out: torch.mm(a, b, out=out), repeat=3, budget_s=budget_s / 3
        )
        spent += seconds * 4
        rate = 2.0 * n**3 / seconds
        if rate > best:
            best, size = rate, n
        if seconds > 0.05 or spent > budget_s or n >= 4096:
            return best, size
        n *= 2


def _conv_flops(dtype: torch.dtype, budget_s: float = 0.8) -> float:
    """Best FLOP/s of a dense 3x3 conv, 256 -> 256 channels on 32x32 (1.2 GFLOP per call)."""
    x = torch.randn(1, 256, 32, 32).to(dtype)
    w = torch.randn(256, 256, 3, 3).to(dtype)
    conv = torch.nn.functional.conv2d
    conv(x, w, padding=1)  # warm-up: oneDNN primitive creation
    seconds = _time(lambda: conv(x, w, padding=1), repeat=5, budget_s=budget_s)
    return 2.0 * 32 * 32 * 256 * 256 * 9 / seconds


def _copy_bandwidth(dtype: torch.dtype, budget_s: float = 1.0) -> tuple[float, int]:
    """Best bytes/s (read + write) of ``dst.copy_(src)`` on buffers well beyond the caches."""
    nbytes = max(128 << 20, 4 * _last_level_cache_bytes())
    nbytes = min(nbytes, 1 << 30)
    with contextlib.suppress(AttributeError, ValueError, OSError):
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        nbytes = max(16 << 20, min(nbytes, available // 8))
    numel = nbytes // torch.empty((), dtype=dtype).element_size()
    src = torch.ones(numel, dtype=dtype)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page once
    # The median, not the best: on shared virtual machines single copies sometimes run at
    # twice the sustained rate, and a roofline from such a burst would be too optimistic.
    seconds = _time(lambda: dst.copy_(src), repeat=15, budget_s=budget_s, reduce=statistics.median)
    moved = 2 * numel * src.element_size()
    return moved / seconds, moved // 2


def _time(fn, repeat: int, budget_s: float, reduce=min) -> float:
    """``reduce`` (min by default) of the wall times of up to ``repeat`` runs of ``fn()``.

    Stops early once ``budget_s`` seconds have passed.
    """
    times, start = [], time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return max(reduce(times), 1e-9)


def _last_level_cache_bytes() -> int:
    """Size of the largest CPU cache sysfs reports (0 when unknown)."""
    largest = 0
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        with contextlib.suppress(OSError, ValueError):
            text = size_file.read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            largest = max(largest, int(text.rstrip("KMG")) * scale)
    return largest


@contextlib.contextmanager
def _num_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _key(cpu: str, dtype: str, threads: int) -> str:
    return f"{cpu}|{dtype}|{threads}|torch {torch.__version__}"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("format") != _FORMAT
        or not isinstance(data.get("peaks"), dict)
    ):
        return {}
    return data["peaks"]


def _write_cache(path: Path, key: str, peaks: Peaks) -> None:
    entries = _read_cache(path)
    entries[key] = peaks.to_dict()
    text = json.dumps({"format": _FORMAT, "peaks": entries}, indent=2, sort_keys=True)
    with contextlib.suppress(OSError):  # a read-only home must not stop a profile
        atomic_write_text(path, text + "\n")
