"""Modulated dense 3x3 conv (StyleGAN2) vs modulated depthwise-separable conv (issue 7).

Prints and saves (``modulated.json``) the parameters and MACs of both at 512 channels and
the measured forward time of both on this machine. The dense layer is StyleGAN2's fused
modulated conv (``modulated_conv2d`` with ``fused_modconv=True``: per-sample weights
``W * s``, demodulated, one grouped conv with ``groups = N``). Times are medians over
interleaved rounds; the speed-up is the median of per-round ratios, so that load from other
processes on a shared machine hits both sides alike.

Run: ``python benchmarks/run_all.py modulated`` or ``python benchmarks/bench_modulated.py``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sepconv import cost
from sepconv.layers.modulated import EqualLinear, ModulatedSeparableConv2d

CHANNELS, STYLE_DIM, KERNEL, BATCH = 512, 512, 3, 4
SIZES = (32, 64)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated dense conv: fused (grouped conv) for NCHW, unfused for channels_last."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int
    ) -> None:
        super().__init__()
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.gain = 1.0 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.affine(style)
        weight = self.weight[None] * self.gain * s.reshape(n, 1, c, 1, 1)  # (N, O, C, k, k)
        d = torch.rsqrt(weight.square().sum(dim=(2, 3, 4)) + 1e-8)  # (N, O)
        k = weight.shape[-1]
        if x.is_contiguous():  # fused: per-sample weights, one grouped conv (groups = N)
            weight = weight * d.reshape(n, -1, 1, 1, 1)
            out = F.conv2d(
                x.reshape(1, n * c, h, w), weight.reshape(-1, c, k, k), padding=k // 2, groups=n
            )
            return out.reshape(n, -1, h, w)
        # channels_last: StyleGAN2's fused_modconv=False, scale the activations instead
        out = F.conv2d(x * s.reshape(n, c, 1, 1), self.weight * self.gain, padding=k // 2)
        return out * d.reshape(n, -1, 1, 1)


def costs(size: int) -> dict:
    """Parameters and MACs (conv MACs plus per-call weight preparation) of both layers."""
    n, c, o, k2, hw = BATCH, CHANNELS, CHANNELS, KERNEL * KERNEL, size * size
    affine_params = STYLE_DIM * c + c
    affine_macs = n * STYLE_DIM * c
    dense_conv = cost.conv_macs(c, o, KERNEL, size, batch=n)
    sep_conv = cost.separable_macs(c, o, KERNEL, size, batch=n)
    assert dense_conv == n * hw * o * c * k2 and sep_conv == n * hw * c * (k2 + o)
    return {
        "dense": {
            "params": cost.conv_params(c, o, KERNEL, bias=False) + affine_params,
            "conv_macs": dense_conv,
            # modulate W*s, sum of squares, scale by d: each N*O*C*k*k
            "weight_prep_macs": 3 * n * o * c * k2 + affine_macs,
        },
        "separable": {
            "params": cost.separable_params(c, o, KERNEL, bias=False) + affine_params,
            "conv_macs": sep_conv,
            # D*s (N*C*k*k), G = P^2 |D|^2 (O*C + C*k*k), s^2 @ G^T (N*O*C), P*d (N*O*C)
            "weight_prep_macs": n * c * k2 + o * c + c * k2 + 2 * n * o * c + affine_macs,
        },
    }


def time_forward(size: int, repeats: int) -> dict:
    """Median forward times (ms) of the three forms, and median per-round speed-ups."""
    torch.manual_seed(0)
    dense = ModulatedConv2d(CHANNELS, CHANNELS, KERNEL, STYLE_DIM)
    fused = ModulatedSeparableConv2d(CHANNELS, CHANNELS, KERNEL, STYLE_DIM)
    unfused = ModulatedSeparableConv2d(CHANNELS, CHANNELS, KERNEL, STYLE_DIM, fused_modconv=False)
    unfused.load_state_dict(fused.state_dict())
    x, style = torch.randn(BATCH, CHANNELS, size, size), torch.randn(BATCH, STYLE_DIM)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    forms = {
        "dense": (dense, x),
        "dense_channels_last": (dense, x_cl),
        "separable": (fused, x),
        "separable_unfused": (unfused, x),
        "separable_channels_last": (fused, x_cl),  # fused_modconv=None picks unfused here
    }
    times: dict[str, list[float]] = {name: [] for name in forms}
    with torch.no_grad():
        torch.testing.assert_close(fused(x, style), unfused(x, style), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dense(x, style), dense(x_cl, style), rtol=1e-4, atol=1e-4)
        for layer, inp in forms.values():  # warm-up
            layer(inp, style)
        for _ in range(repeats):
            for name, (layer, inp) in forms.items():
                start = time.perf_counter()
                layer(inp, style)
                times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}

    def speedup(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    ratios = {
        "nchw": speedup("dense", "separable"),
        "channels_last": speedup("dense_channels_last", "separable_channels_last"),
        "best_vs_best": speedup(
            min(("dense", "dense_channels_last"), key=ms.get),
            min(("separable", "separable_unfused", "separable_channels_last"), key=ms.get),
        ),
    }
    return {"ms": ms, "speedup": ratios, "repeats": repeats}


def main(out_dir: Path, repeats: int = 15) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "config": {
            "batch": BATCH,
            "channels": CHANNELS,
            "style_dim": STYLE_DIM,
            "kernel": KERNEL,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "sizes": {},
    }
    print(
        f"modulated {KERNEL}x{KERNEL} conv, {CHANNELS}->{CHANNELS} channels, style_dim {STYLE_DIM}, "
        f"batch {BATCH}, {torch.get_num_threads()} threads, forward only, eager, float32"
    )
    header = f"{'input':>16} {'form':>24} {'params':>10} {'conv GMACs':>11} {'prep MMACs':>11} {'fwd ms':>9}"
    print(header)
    for size in SIZES:
        c = costs(size)
        t = time_forward(size, repeats)
        results["sizes"][str(size)] = {"costs": c, "timing": t}
        shape = f"{BATCH}x{CHANNELS}x{size}x{size}"
        for form in t["ms"]:
            key = form.split("_")[0]
            print(
                f"{shape:>16} {form:>24} {c[key]['params']:>10,} {c[key]['conv_macs'] / 1e9:>11.3f} "
                f"{c[key]['weight_prep_macs'] / 1e6:>11.2f} {t['ms'][form]:>9.1f}"
            )
        r = t["speedup"]
        print(
            f"{'':>16} params ratio {c['separable']['params'] / c['dense']['params']:.3f}, conv MACs "
            f"ratio {c['separable']['conv_macs'] / c['dense']['conv_macs']:.3f}; measured speed-up "
            f"NCHW {r['nchw']:.2f}x, channels_last {r['channels_last']:.2f}x, "
            f"best vs best {r['best_vs_best']:.2f}x"
        )
    (out_dir / "modulated.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results"))
