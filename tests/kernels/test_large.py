"""Outputs beyond 2^31 elements: the kernels index with 64-bit offsets.

The input is one image expanded over the batch (stride 0), so only the output, 8.7 GB of
float32, has to exist: every batch entry must equal the convolution of that one image, and
the last entries start beyond element 2^31 of the output.
"""

from __future__ import annotations

import pytest
import torch

from sepconv.functional.conv import depthwise_forward, separable_forward
from sepconv.functional.padding import resolve_padding
from tests.kernels.helpers import env

C, L = 64, 2**16
N = 2**31 // (C * L) + 8  # 520 images: output elements 2.18e9 > 2^31
OUT_BYTES = N * C * L * 4


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.slow
@pytest.mark.skipif(
    _available_bytes() < OUT_BYTES + (3 << 30), reason="needs about 12 GB of free memory"
)
@pytest.mark.parametrize("kind", ["depthwise", "separable"])
def test_outputs_beyond_2_31_elements(kind, kernels_built):
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, C, L, generator=gen)
    wd, bd = torch.randn(C, 1, 3, generator=gen), torch.randn(C, generator=gen)
    wp, bp = torch.randn(C, C, 1, generator=gen), torch.randn(C, generator=gen)
    plan = resolve_padding(1, (3,), (1,), (1,))

    def run(x):
        if kind == "depthwise":
            return depthwise_forward(x, wd, bd, (1,), (1,), plan, "zeros")
        return separable_forward(x, wd, wp, bd, bp, (1,), (1,), plan, "zeros")

    with torch.inference_mode():
        with env("off"):
            expected = run(image)[0]
        with env("on"):
            out = run(image.expand(N, C, L))
        assert out.shape == (N, C, L) and out.is_contiguous()
        assert (N - 1) * C * L > 2**31  # the last image's offset needs 64 bits
        for n in (0, N // 2, N - 2, N - 1):
            torch.testing.assert_close(out[n], expected, rtol=1e-5, atol=1e-4)
        del out
