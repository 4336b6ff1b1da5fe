"""Python side of the C++ kernels: geometry, calls through ctypes, autograd functions.

Everything is expressed as a 2d problem (a 1d convolution is 2d with ``H = 1``). The
callers in :mod:`sepconv.kernels.dispatch` have already checked that a call is
supported; the functions here assume it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sepconv.kernels import _build

DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2}
MODE_CODE = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Geometry:
    """A depthwise(-separable) convolution problem, as 2d."""

    rank: int
    N: int
    C: int
    M: int
    H: int
    W: int
    OH: int
    OW: int
    KH: int
    KW: int
    sy: int
    sx: int
    dy: int
    dx: int
    pt: int
    pb: int
    pl: int
    pr: int
    mode: str
    O: int  # noqa: E741 - pointwise output channels (0 for depthwise alone)
    G: int  # pointwise groups
    nhwc: bool  # internal layout: channels innermost (input channel stride 1)

    @property
    def pad(self) -> tuple[int, ...]:
        """Padding in ``F.pad`` order for the original rank."""
        return (self.pl, self.pr) if self.rank == 1 else (self.pl, self.pr, self.pt, self.pb)


def geometry(
    x: Tensor,
    kernel: tuple[int, ...],
    mid: int,
    stride,
    dilation,
    amounts,
    mode: str,
    out_channels: int = 0,
    groups: int = 1,
) -> Geometry | None:
    """The problem's geometry, or None when the output would be empty."""
    rank = x.dim() - 2
    if rank == 1:
        H, W = 1, x.shape[2]
        KH, KW = 1, kernel[0]
        sy, sx, dy, dx = 1, stride[0], 1, dilation[0]
        pl, pr = amounts
        pt = pb = 0
    else:
        H, W = x.shape[2], x.shape[3]
        KH, KW = kernel
        sy, sx = stride
        dy, dx = dilation
        pl, pr, pt, pb = amounts
    OH = (H + pt + pb - dy * (KH - 1) - 1) // sy + 1
    OW = (W + pl + pr - dx * (KW - 1) - 1) // sx + 1
    if OH <= 0 or OW <= 0:
        return None
    C = x.shape[1]
    nhwc = x.stride(1) == 1 and C > 1
    return Geometry(
        rank,
        x.shape[0],
        C,
        mid // C,
        H,
        W,
        OH,
        OW,
        KH,
        KW,
        sy,
        sx,
        dy,
        dx,
        pt,
        pb,
        pl,
        pr,
        mode,
        out_channels,
        groups,
        nhwc,
    )


def strides4(t: Tensor, rank: int) -> tuple[int, int, int, int]:
    return _as4(t.stride(), rank)


def _as4(s: tuple[int, ...], rank: int) -> tuple[int, int, int, int]:
    """Strides of a rank-1 or rank-2 conv tensor as the library's (N, C, H, W) four."""
    return (s[0], s[1], 0, s[2]) if rank == 1 else (s[0], s[1], s[2], s[3])


@functools.cache
def tile_budget() -> int:
    """``SEPCONV_KERNELS_TILE_BYTES`` (0: the library's default), read once per process."""
    try:
        return int(os.environ.get("SEPCONV_KERNELS_TILE_BYTES", "0"))
    except ValueError:
        return 0


#: The stage between a separable forward's convolutions, or the one after them
#: (``csrc/mid_stage.h``), as the kernels take it: ``(norm, eps, lo, hi)``: whether a batch
#: norm with running statistics runs (its ``eps``), then a clamp to ``[lo, hi]`` (None:
#: unbounded on that side).
MidParams = tuple[bool, float, float | None, float | None]


def _double_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _mid_values(mid: MidParams | None) -> list[int]:
    """geo[30..33] (or [34..37] after the convolutions): flags (1: norm, 2: clamp), eps, lo
    and hi as the bits of doubles."""
    if mid is None:
        return [0, 0, 0, 0]
    norm, eps, lo, hi = mid
    clamp = lo is not None or hi is not None
    lo = -float("inf") if lo is None else lo
    hi = float("inf") if hi is None else hi
    flags = (1 if norm else 0) | (2 if clamp else 0)
    return [flags, _double_bits(eps), _double_bits(lo), _double_bits(hi)]


def _geo_array(
    g: Geometry,
    xs,
    os_,
    out_nhwc: bool = False,
    mid: MidParams | None = None,
    post: MidParams | None = None,
) -> ctypes.Array:
    values = [
        g.N,
        g.C,
        g.M,
        g.H,
        g.W,
        g.OH,
        g.OW,
        g.KH,
        g.KW,
        g.sy,
        g.sx,
        g.dy,
        g.dx,
        g.pt,
        g.pl,
        MODE_CODE[g.mode],
        g.O,
        g.G,
        torch.get_num_threads(),
        int(g.nhwc),
        tile_budget(),
        *xs,
        *os_,
        int(out_nhwc),
        *_mid_values(mid),
        *_mid_values(post),
    ]
    return (ctypes.c_int64 * len(values))(*values)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


# ----------------------------------------------------------------------------- output pool
# Fresh large CPU allocations are page-faulted in on first touch, and on virtual machines
# that costs more than the convolution itself (see docs/performance.md). Outputs therefore
# come from a small pool of storages: a storage is handed out again only when nothing but
# the pool references it (no tensor, view, numpy array or storage object of the caller
# does), so reuse can never alias live data. SEPCONV_KERNELS_POOL_MB caps the bytes the pool
# keeps (default 512; 0 disables it).

_pool_lock = threading.Lock()
_pool: dict[int, list[torch.UntypedStorage]] = {}
_pool_bytes = 0
_POOL_PER_SIZE = 4


@functools.cache
def _pool_limit() -> int:
    """``SEPCONV_KERNELS_POOL_MB`` in bytes, read once per process."""
    try:
        return int(float(os.environ.get("SEPCONV_KERNELS_POOL_MB", "512")) * 2**20)
    except ValueError:
        return 512 * 2**20


def pooled_empty(shape, strides, dtype: torch.dtype, nbytes: int | None = None) -> Tensor:
    """An uninitialised tensor of ``shape``/``strides``, reusing a free pooled storage.

    ``nbytes`` (the storage size, :func:`storage_bytes`) may be given when it is known.
    """
    global _pool_bytes
    if nbytes is None:
        nbytes = storage_bytes(shape, strides, dtype)
    limit = _pool_limit()
    if nbytes < (1 << 20) or limit <= 0:  # small: the allocator is fine
        return torch.empty_strided(shape, strides, dtype=dtype)
    with _pool_lock:
        entries = _pool.setdefault(nbytes, [])
        for storage in entries:
            if torch._C._storage_Use_Count(storage._cdata) == 1 and storage.nbytes() >= nbytes:
                return torch.empty(0, dtype=dtype).set_(storage, 0, shape, strides)
        if len(entries) < _POOL_PER_SIZE and nbytes <= limit:
            _evict_free(limit - nbytes, nbytes)
            if _pool_bytes + nbytes <= limit:
                storage = torch.UntypedStorage(nbytes)
                entries.append(storage)
                _pool_bytes += nbytes
                return torch.empty(0, dtype=dtype).set_(storage, 0, shape, strides)
    return torch.empty_strided(shape, strides, dtype=dtype)


def _evict_free(keep: int, wanted: int) -> None:
    """Drop free pooled storages of sizes other than ``wanted``, oldest sizes first, until
    the pool holds at most ``keep`` bytes (or nothing more is free). Without it, the first
    sizes a process sees would fill the pool for good and later, larger outputs would
    page-fault on every call."""
    global _pool_bytes
    for size in list(_pool):
        if _pool_bytes <= keep:
            return
        if size == wanted:
            continue
        entries = _pool[size]
        for storage in list(entries):
            if _pool_bytes > keep and torch._C._storage_Use_Count(storage._cdata) == 1:
                entries.remove(storage)
                _pool_bytes -= size
        if not entries:
            del _pool[size]


def storage_bytes(shape, strides, dtype: torch.dtype) -> int:
    """Bytes of the smallest storage holding a tensor of ``shape``/``strides``."""
    if any(size == 0 for size in shape):
        return 0
    extent = 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))
    return extent * dtype.itemsize


def clear_pool() -> None:
    """Drop the pool's references (storages still in use stay alive with their tensors)."""
    global _pool_bytes
    with _pool_lock:
        _pool.clear()
        _pool_bytes = 0


def release_buffers() -> None:
    """Free the buffers that the kernels' threads keep between calls (``csrc/kept.h``): those
    of this thread and of the OpenMP workers of a team of ``torch.get_num_threads()``. A
    no-op when the library is not loaded."""
    if _build._lib is not None:
        _build._lib.sepconv_release_buffers(torch.get_num_threads())


def _layout_strides(shape, rank: int, channels_inner: bool) -> tuple[int, ...]:
    """Dense strides of ``shape``, with channels innermost when ``channels_inner``."""
    if not channels_inner:
        strides, acc = [], 1
        for size in reversed(shape):
            strides.append(acc)
            acc *= size
        return tuple(reversed(strides))
    if rank == 1:
        _, c, length = shape
        return (length * c, 1, c)
    _, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def _empty_like_layout(shape, like: Tensor, rank: int, channels_inner: bool) -> Tensor:
    """An empty tensor of ``shape`` with channels innermost when ``channels_inner``."""
    shape = tuple(int(s) for s in shape)
    return pooled_empty(shape, _layout_strides(shape, rank, channels_inner), like.dtype)


def _out_channels_last(x: Tensor, rank: int) -> bool:
    """PyTorch's rule: a 2d conv of a channels_last input returns channels_last."""
    return (
        rank == 2 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    )


def _out_shape(g: Geometry, channels: int):
    return (g.N, channels, g.OW) if g.rank == 1 else (g.N, channels, g.OH, g.OW)


def _check(rc: int) -> None:
    if rc != 0:
        raise RuntimeError(f"sepconv kernel returned error code {rc}")


# ----------------------------------------------------------------------------- raw calls


@dataclass(frozen=True)
class Launch:
    """What a forward call hands the library besides pointers, worked out once per problem
    (input shape, strides and dtype): the geometry array and the output's layout."""

    g: Geometry
    geo: ctypes.Array
    out_shape: tuple[int, ...]
    out_strides: tuple[int, ...]
    out_nbytes: int

    def empty_output(self, dtype: torch.dtype) -> Tensor:
        return pooled_empty(self.out_shape, self.out_strides, dtype, self.out_nbytes)


def _launch(
    x: Tensor,
    g: Geometry,
    channels: int,
    out_nhwc: bool,
    mid: MidParams | None = None,
    post: MidParams | None = None,
) -> Launch:
    shape = _out_shape(g, channels)
    strides = _layout_strides(shape, g.rank, out_nhwc)
    geo = _geo_array(g, strides4(x, g.rank), _as4(strides, g.rank), out_nhwc, mid, post)
    return Launch(g, geo, shape, strides, storage_bytes(shape, strides, x.dtype))


def separable_launch(
    x: Tensor, g: Geometry, mid: MidParams | None = None, post: MidParams | None = None
) -> Launch:
    """The :class:`Launch` of a fused separable forward of ``x``, with the stage ``mid``
    between the convolutions and ``post`` after them when given."""
    return _launch(x, g, g.O, _out_channels_last(x, g.rank), mid, post)


def depthwise_launch(x: Tensor, g: Geometry) -> Launch:
    """The :class:`Launch` of a depthwise forward of ``x``.

    The output layout follows the computation: channels innermost iff the input has them so
    (2d channels_last; a transposed 1d input gets a contiguous output, computed planar).
    """
    out_nhwc = g.nhwc and g.rank == 2 and _out_channels_last(x, 2)
    if g.nhwc and not out_nhwc:
        g = _replace(g, nhwc=False)
    return _launch(x, g, g.C * g.M, out_nhwc)


_NO_NORM = (None, None, None, None)
_NO_NORMS = (ctypes.c_void_p * 8)()  # (all null)


def separable_forward_raw(
    x, wd, wp, bd, bp, g: Geometry, launch: Launch | None = None, norm=_NO_NORM, post=_NO_NORM
) -> Tensor:
    """Fused forward ``(N, C, *spatial) -> (N, O, *spatial_out)`` (``launch`` from
    :func:`separable_launch`, computed here when not given). ``norm`` / ``post``: the batch
    norms' ``(running_mean, running_var, weight, bias)``, each ``(C*M,)`` / ``(O,)`` or None,
    where the launch has a stage with a norm between the convolutions / after them."""
    lib = _build.load()
    launch = launch or separable_launch(x, g)
    out = launch.empty_output(x.dtype)
    staged = norm is not _NO_NORM or post is not _NO_NORM
    pointers, _alive = _pointers((wd, bd, wp, bp, *norm, *post) if staged else (wd, bd, wp, bp))
    norms = (ctypes.c_void_p * 8)(*pointers[4:]) if staged else _NO_NORMS
    args = (x.data_ptr(), *pointers[:4], out.data_ptr(), launch.geo, norms)
    _check(lib.sepconv_sep_forward(DTYPE_CODE[x.dtype], *args))
    return out


def pointwise_forward_raw(
    x: Tensor, weight: Tensor, bias: Tensor | None, mid: MidParams, norm=_NO_NORM
) -> Tensor:
    """The 1x1 convolution of inference in one call (``csrc/pointwise.h``):
    ``clamp(norm(conv1x1(x, weight, bias)))``, float32.

    Args:
        x: ``(N, C, H, W)``, contiguous or channels_last (the output has its layout).
        weight: ``(O, C, 1, 1)``. bias: ``(O,)`` or None.
        mid: the norm's ``eps`` and the clamp, as :data:`MidParams` (``norm`` True only
            with ``norm`` given).
        norm: ``(running_mean, running_var, weight, bias)``, each ``(O,)`` (the last two
            may be None), or all None.

    Returns:
        ``(N, O, H, W)``.
    """
    nhwc = not x.is_contiguous()
    geo, shape, strides, nbytes = pointwise_launch(
        x.shape, nhwc, weight.shape[0], tuple(mid), torch.get_num_threads(), x.dtype
    )
    out = pooled_empty(shape, strides, x.dtype, nbytes)
    return _conv_norm_act_call(_build.load().sepconv_pw_forward, x, weight, bias, norm, out, geo)


@functools.lru_cache(maxsize=256)
def pointwise_launch(shape, nhwc: bool, o: int, mid: MidParams, threads: int, dtype) -> tuple:
    """The geometry array of :func:`pointwise_forward_raw` and its output's shape,
    strides and bytes, worked out once per problem (a call's Python is part of a batch-1
    network's time)."""
    n, c, h, w = shape
    flags, *bits = _mid_values(mid)
    values = (n, c, o, h * w, int(nhwc), threads, flags, *bits)
    out_shape = (n, o, h, w)
    strides = _layout_strides(out_shape, 2, nhwc)
    nbytes = storage_bytes(out_shape, strides, dtype)
    return (ctypes.c_int64 * len(values))(*values), out_shape, strides, nbytes


def dense_forward_raw(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mid: MidParams,
    norm=_NO_NORM,
) -> Tensor:
    """A dense convolution of few input channels (a stem) at inference in one call
    (``csrc/dense.h``): ``clamp(norm(conv2d(x, weight, bias)))``, zero padding, one group,
    float32.

    Args:
        x: ``(N, C, H, W)``, contiguous or channels_last.
        weight: ``(O, C, KH, KW)``. bias: ``(O,)`` or None.
        stride, padding, dilation: as ``nn.Conv2d``'s (padding: zeros on both sides).
        mid: the norm's ``eps`` and the clamp, as :data:`MidParams`.
        norm: ``(running_mean, running_var, weight, bias)``, each ``(O,)`` (the last two may
            be None), or all None.

    Returns:
        ``(N, O, OH, OW)`` in ``x``'s layout.
    """
    nhwc = not x.is_contiguous()
    geo, shape, strides, nbytes = dense_launch(
        tuple(x.shape),
        nhwc,
        tuple(weight.shape),
        stride,
        padding,
        dilation,
        tuple(mid),
        torch.get_num_threads(),
        x.dtype,
    )
    out = pooled_empty(shape, strides, x.dtype, nbytes)
    lib = _build.load()
    return _conv_norm_act_call(lib.sepconv_dense_forward, x, weight, bias, norm, out, geo)


@functools.lru_cache(maxsize=256)
def dense_launch(
    shape, nhwc: bool, weight_shape, stride, padding, dilation, mid: MidParams, threads: int, dtype
) -> tuple:
    """The geometry array of :func:`dense_forward_raw` and its output's shape, strides and
    bytes (in the input's layout), worked out once per problem."""
    n, c, h, w = shape
    o, _, kh, kw = weight_shape
    (sy, sx), (py, px), (dy, dx) = stride, padding, dilation
    oh = (h + 2 * py - dy * (kh - 1) - 1) // sy + 1
    ow = (w + 2 * px - dx * (kw - 1) - 1) // sx + 1
    flags, *bits = _mid_values(mid)
    sizes = (n, c, h, w, o, oh, ow, kh, kw, sy, sx, py, px, dy, dx, nhwc, nhwc)
    values = (*sizes, threads, flags, *bits)
    out_shape = (n, o, oh, ow)
    strides = _layout_strides(out_shape, 2, nhwc)
    nbytes = storage_bytes(out_shape, strides, dtype)
    return (ctypes.c_int64 * len(values))(*values), out_shape, strides, nbytes


def conv_output(x: Tensor, o: int, oh: int, ow: int) -> Tensor:
    """A pooled ``(N, O, OH, OW)`` output in ``x``'s layout (channels_last where ``x`` is
    not contiguous)."""
    shape = (x.shape[0], o, oh, ow)
    return pooled_empty(shape, _layout_strides(shape, 2, not x.is_contiguous()), x.dtype)


def _conv_norm_act_call(entry, x, weight, bias, norm, out: Tensor, geo) -> Tensor:
    """``entry(x, weight, bias, *norm, out, geo)`` of the library (the 1x1 and the stem
    forward), the tensors contiguous; ``out``."""
    pointers, _alive = _pointers((weight, bias, *norm))
    _check(entry(x.data_ptr(), *pointers, out.data_ptr(), geo))
    return out


def _pointers(tensors: Iterable[Tensor | None]) -> tuple[list[int | None], list[Tensor]]:
    """Each tensor's data pointer (None for None), that of a contiguous copy where it is not
    contiguous, and those copies, which the caller keeps alive during its call. (One loop:
    a batch-1 MobileNetV2 passes 300 tensors a forward, and two function calls a tensor
    were a sixth of its Python; comprehensions took 1.4x the loop's time, run AE.)"""
    pointers, copies = [], []
    for t in tensors:
        if t is None:
            pointers.append(None)
            continue
        if not t.is_contiguous():
            t = t.contiguous()
            copies.append(t)
        pointers.append(t.data_ptr())
    return pointers, copies


def depthwise_forward_raw(x, wd, bd, g: Geometry, launch: Launch | None = None) -> Tensor:
    """Depthwise forward ``(N, C, *spatial) -> (N, C*M, *spatial_out)``."""
    lib = _build.load()
    launch = launch or depthwise_launch(x, g)
    out = launch.empty_output(x.dtype)
    (wd_ptr, bd_ptr), _alive = _pointers((wd, bd))
    code = DTYPE_CODE[x.dtype]
    _check(lib.sepconv_dw_forward(code, x.data_ptr(), wd_ptr, bd_ptr, out.data_ptr(), launch.geo))
    return out


def _replace(g: Geometry, **changes) -> Geometry:
    from dataclasses import replace

    return replace(g, **changes)


def _dense(t: Tensor, rank: int, channels_inner: bool) -> Tensor:
    """``t`` dense, channels innermost or planar as asked (copies only when needed)."""
    if channels_inner:
        if rank == 1:
            return (
                t
                if t.stride(1) == 1
                and t.stride(2) == t.shape[1]
                and t.stride(0) == t.shape[1] * t.shape[2]
                else t.transpose(1, 2).contiguous().transpose(1, 2)
            )
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def backward_raw(
    x, wd, wp, gy, g: Geometry, need_x: bool, need_bd: bool, need_wp: bool, need_sum: bool = False
):
    """``(gx, gwd, gbd, gwp, gy_sum)`` of a separable (``wp`` given) or depthwise convolution:
    ``gy_sum`` ``(O,)`` is ``gy`` summed over images and pixels (the pointwise bias
    gradient), computed with ``gwp`` where ``need_sum``; else None."""
    lib = _build.load()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    separable = wp is not None
    if separable:
        # Any dense layout of gy works for the GEMMs.
        if not (
            gy.is_contiguous()
            or (g.rank == 2 and gy.is_contiguous(memory_format=torch.channels_last))
        ):
            gy = gy.contiguous()
    else:
        gy = _dense(gy, g.rank, g.nhwc)
    gy = gy.to(x.dtype)
    gx = _empty_like_layout(tuple(x.shape), x, g.rank, g.nhwc) if need_x else None
    mid = g.C * g.M
    kernel_taps = g.KH * g.KW
    gwd = torch.empty(mid * kernel_taps, dtype=acc)
    gbd = torch.empty(mid, dtype=acc) if need_bd else None
    gwp = torch.empty(g.O * (mid // g.G), dtype=acc) if (separable and need_wp) else None
    gy_sum = torch.empty(g.O, dtype=acc) if gwp is not None and need_sum else None
    wd = wd.contiguous()
    wp = None if wp is None else wp.contiguous()
    gys = (ctypes.c_int64 * 4)(*strides4(gy, g.rank))
    gxs = (ctypes.c_int64 * 4)(*(strides4(gx, g.rank) if gx is not None else (0, 0, 0, 0)))
    geo = _geo_array(g, strides4(x, g.rank), (0, 0, 0, 0))
    _check(
        lib.sepconv_backward(
            DTYPE_CODE[x.dtype],
            _ptr(x),
            _ptr(wd),
            _ptr(wp),
            _ptr(gy),
            gys,
            _ptr(gx),
            gxs,
            _ptr(gwd),
            _ptr(gbd),
            _ptr(gwp),
            _ptr(gy_sum),
            geo,
            int(torch.are_deterministic_algorithms_enabled()),
        )
    )
    return gx, gwd, gbd, gwp, gy_sum


# ----------------------------------------------------------------------------- PyTorch path
# Used for double backward (create_graph=True): differentiable and exact.


def _conv(rank):
    return F.conv1d if rank == 1 else F.conv2d


def torch_depthwise(x, wd, bd, g: Geometry) -> Tensor:
    stride = (g.sx,) if g.rank == 1 else (g.sy, g.sx)
    dilation = (g.dx,) if g.rank == 1 else (g.dy, g.dx)
    if any(g.pad):
        x = F.pad(x, g.pad) if g.mode == "zeros" else F.pad(x, g.pad, mode=g.mode)
    return _conv(g.rank)(x, wd, bd, stride, 0, dilation, g.C)


def torch_separable(x, wd, wp, bd, bp, g: Geometry) -> Tensor:
    return _conv(g.rank)(torch_depthwise(x, wd, bd, g), wp, bp, 1, 0, 1, g.G)


def _recompute_grads(fn, inputs, needs, gy):
    """Gradients of ``fn(*inputs)`` through PyTorch, themselves differentiable.

    The saved tensors are used as they are, not detached: the gradients must stay connected
    to the real input and weights, or a double backward (gradient penalties) would be wrong.
    """
    with torch.enable_grad():
        out = fn(*inputs)
        wanted = [t for t, n in zip(inputs, needs) if t is not None and n]
        grads = iter(torch.autograd.grad(out, wanted, gy, create_graph=True, allow_unused=True))
    return tuple(next(grads) if (t is not None and n) else None for t, n in zip(inputs, needs))


# ----------------------------------------------------------------------------- autograd


class SeparableFunction(torch.autograd.Function):
    """Fused forward; backward recomputes the intermediate, so only the input is saved."""

    @staticmethod
    def forward(ctx, x, wd, wp, bd, bp, g, launch=None):
        ctx.g = g
        ctx.has_bd, ctx.has_bp = bd is not None, bp is not None
        ctx.save_for_backward(x, wd, wp, bd, bp)
        return separable_forward_raw(x, wd, wp, bd, bp, g, launch)

    @staticmethod
    def backward(ctx, gy):
        x, wd, wp, bd, bp = ctx.saved_tensors
        g = ctx.g
        needs = ctx.needs_input_grad[:5]
        if torch.is_grad_enabled():  # create_graph: differentiable PyTorch recomputation
            return (
                *_recompute_grads(
                    lambda *a: torch_separable(*a, g), (x, wd, wp, bd, bp), needs, gy
                ),
                None,
                None,
            )
        need_bp = bp is not None and needs[4]
        # (gy's sums: the pointwise bias gradient, and the depthwise bias's share of gwp)
        need_sum = need_bp or (bd is not None and needs[2])
        gx, gwd, gbd, gwp, gy_sum = backward_raw(
            x, wd, wp, gy, g, needs[0], needs[3] and bd is not None, needs[2], need_sum
        )
        if gy_sum is None and need_sum:  # (the kernel sums gy with gwp only)
            dims = (0, 2) if g.rank == 1 else (0, 2, 3)
            gy_sum = gy.sum(dim=dims, dtype=gwd.dtype)
        if gwp is not None and bd is not None:
            # The kernel's recomputed intermediate has no depthwise bias; add its share:
            # d/dwp[o, k] of sum_p gy[o, p] * bd[k] (k inside o's pointwise group).
            per = wp.shape[1]
            gwp.view(g.G, g.O // g.G, per).add_(
                gy_sum.view(g.G, g.O // g.G, 1) * bd.detach().to(gwp.dtype).view(g.G, 1, per)
            )
        gwd = gwd.to(wd.dtype).view_as(wd) if needs[1] else None
        gwp = gwp.to(wp.dtype).view(wp.shape) if gwp is not None else None
        gbd = gbd.to(bd.dtype) if gbd is not None else None
        gbp = gy_sum.to(bp.dtype) if need_bp else None
        return gx, gwd, gwp, gbd, gbp, None, None


class DepthwiseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, wd, bd, g, launch=None):
        ctx.save_for_backward(x, wd, bd)
        launch = launch or depthwise_launch(x, g)
        ctx.g = launch.g  # the computation layout decides the backward's layout
        return depthwise_forward_raw(x, wd, bd, g, launch)

    @staticmethod
    def backward(ctx, gy):
        x, wd, bd = ctx.saved_tensors
        g = ctx.g
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            return (
                *_recompute_grads(lambda *a: torch_depthwise(*a, g), (x, wd, bd), needs, gy),
                None,
                None,
            )
        gx, gwd, gbd, _, _ = backward_raw(
            x, wd, None, gy, g, needs[0], needs[2] and bd is not None, False
        )
        gwd = gwd.to(wd.dtype).view_as(wd) if needs[1] else None
        gbd = gbd.to(bd.dtype) if gbd is not None else None
        return gx, gwd, gbd, None, None
