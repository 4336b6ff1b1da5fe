"""The kernels read nothing past the end of a caller's tensor: inputs placed so that they end
exactly at a page the process may not read (a read past the end would crash the process, so
each case runs in a child process). Small planes are where a row's last vector reaches past
it: the 1x1 forward's own GEMM read 2x2 planes up to 48 bytes past the input's end."""

from __future__ import annotations

import mmap
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.usefixtures("kernels_built"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through libc"),
]

_SCRIPT = textwrap.dedent(
    """
    import ctypes, itertools, mmap, os, torch
    os.environ["SEPCONV_KERNELS"] = "on"
    from sepconv import DepthwiseConv2d, SeparableConv2d
    from sepconv.blocks import ConvNormAct
    from sepconv.kernels import _ops

    PAGE, libc, kept = mmap.PAGESIZE, ctypes.CDLL(None), []

    def guarded(shape, channels_last):
        n, c, h, w = shape
        count = n * c * h * w
        buf = mmap.mmap(-1, 2 * PAGE + count * 4 // PAGE * PAGE)
        kept.append(buf)
        end = ctypes.addressof(ctypes.c_char.from_buffer(buf)) + len(buf)
        assert libc.mprotect(ctypes.c_void_p(end - PAGE), PAGE, 0) == 0  # no access
        flat = torch.frombuffer(buf, dtype=torch.float32, count=count,
                                offset=len(buf) - PAGE - count * 4)
        x = flat.view(n, h, w, c).permute(0, 3, 1, 2) if channels_last else flat.view(shape)
        x.copy_(torch.randn(shape))
        return x

    torch.manual_seed(0)
    sizes = [(8, 1, 1), (8, 2, 2), (16, 1, 3), (3, 2, 5), (32, 4, 4), (64, 3, 3), (300, 1, 1)]
    with torch.no_grad():
        for (c, h, w), k, s, cl in itertools.product(sizes, [1, 3], [1, 2], [False, True]):
            x = guarded((1, c, h, w), cl)
            layers = [SeparableConv2d(c, 12, k, stride=s, padding=k // 2),
                      DepthwiseConv2d(c, k, stride=s, padding=k // 2)]
            if c <= 4:
                layers.append(ConvNormAct(c, 16, k, s))
            for layer in layers:
                out = layer.eval()(x)
                torch.testing.assert_close(out, layer(x.clone()), rtol=1e-5, atol=1e-5)
            weight = torch.randn(40, c, 1, 1)
            out = _ops.pointwise_forward_raw(x, weight, None, (False, 1e-5, None, None))
            torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight))
    print("ok")
    """
)


def test_kernels_read_nothing_past_the_input():
    assert mmap.PAGESIZE > 0
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (
        f"exit {done.returncode}: {done.stderr[-2000:]}"
    )
