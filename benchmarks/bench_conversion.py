"""Dense to depthwise-separable conversion (issue 3): accuracy and output error against MACs
kept, for data-free SVD, calibrated refit and distillation; conversion time of a
ResNet-50-sized model.

Models (trained here, on CPU, from scikit-learn's bundled digits; nothing is downloaded):

- ``vgg16px``: a small VGG-style CNN (five 3x3 conv-BN-ReLU layers, two max-pools) on the
  digits upsampled to 16x16;
- ``digits_cnn``: the demo's CNN (:func:`sepconv.models.digits_cnn`) on the 8x8 digits, its
  stem kept dense as in the demo (skipped if ``sepconv.models`` is not there).

Each model is trained dense, its BatchNorms folded (:func:`sepconv.fold_batchnorm`), then
converted at ranks 1..4 and at two MACs budgets three ways: ``svd`` (data-free),
``calibrated`` (pointwise refit on 512 training images) and ``distilled`` (the calibrated
model after 4 epochs of knowledge distillation on the training images, no labels).
"MACs kept" is over all the model's convolutions, per sample. "output err" is the relative
error of the logits on the test set against the dense model.

The timing part builds a ResNet-50-like network of plain ``nn.Conv2d`` (25.6M parameters,
53 convs) and times ``to_separable`` with 2 threads: exact, ``rank=2``, and
``budget=0.5`` (which also runs the model once on a 224x224 input to count MACs).

Run: ``python benchmarks/run_all.py conversion`` or ``python benchmarks/bench_conversion.py``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sepconv

RANKS = (1, 2, 3, 4)
BUDGETS = (0.35, 0.5)


# ============================================================================ data and models


def load_digits(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified 80/20 split of sklearn's digits, standardised, resized to ``size`` x ``size``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = torch.from_numpy(data.images.astype("float32") / 16.0).unsqueeze(1)
    y = torch.from_numpy(data.target.astype("int64"))
    tr, te = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=y.numpy())
    x_tr, x_te, y_tr, y_te = x[list(tr)], x[list(te)], y[list(tr)], y[list(te)]
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    if size != 8:
        x_tr = F.interpolate(x_tr, size=(size, size), mode="bilinear", align_corners=False)
        x_te = F.interpolate(x_te, size=(size, size), mode="bilinear", align_corners=False)
    return x_tr, y_tr, x_te, y_te


def vgg16px() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 3e-3
) -> None:
    """AdamW, one-cycle schedule, batches of 64, random 1-pixel shifts."""
    g = torch.Generator().manual_seed(0)
    steps = len(x) // 64
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(steps):
            idx = order[i * 64 : (i + 1) * 64]
            xb = torch.roll(
                x[idx], shifts=tuple(torch.randint(-1, 2, (2,), generator=g).tolist()), dims=(2, 3)
            )
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def output_error(model: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> float:
    model.eval()
    return float((model(x) - reference).norm() / reference.norm())


# ============================================================================ accuracy vs MACs


def sweep(name: str, model: nn.Module, data, input_size, exclude=None) -> list[dict]:
    x_tr, _, x_te, y_te = data
    dense = sepconv.fold_batchnorm(model.eval())
    reference = dense(x_te).detach()
    calibration = list(torch.split(x_tr[:512], 128))
    distill_data = list(torch.split(x_tr, 64))
    rows = [
        {
            "model": name,
            "setting": "dense",
            "method": "dense",
            "macs_kept": 1.0,
            "params_kept": 1.0,
            "accuracy": accuracy(dense, x_te, y_te),
            "output_error": 0.0,
        }
    ]
    settings = [({"rank": r}, f"rank={r}") for r in RANKS] + [
        ({"budget": b}, f"budget={b}") for b in BUDGETS
    ]
    for options, label in settings:
        common = {"input_size": input_size, "exclude": exclude, **options}
        plan = sepconv.plan_separable(dense, **common)
        base = {
            "model": name,
            "setting": label,
            "macs_kept": plan.macs_ratio,
            "params_kept": plan.params_ratio,
        }
        svd = sepconv.to_separable(dense, plan)
        rows.append(
            {
                **base,
                "method": "svd",
                "accuracy": accuracy(svd, x_te, y_te),
                "output_error": output_error(svd, reference, x_te),
            }
        )
        cal_plan = sepconv.plan_separable(dense, calibration=calibration, **common)
        calibrated = sepconv.to_separable(dense, cal_plan)
        rows.append(
            {
                **base,
                "method": "calibrated",
                "accuracy": accuracy(calibrated, x_te, y_te),
                "output_error": output_error(calibrated, reference, x_te),
            }
        )
        student = copy.deepcopy(calibrated)
        sepconv.distill(student, dense, distill_data, epochs=4, lr=1e-3, temperature=4.0)
        rows.append(
            {
                **base,
                "method": "distilled",
                "accuracy": accuracy(student, x_te, y_te),
                "output_error": output_error(student, reference, x_te),
            }
        )
        print(
            f"  {name} {label}: MACs kept {plan.macs_ratio:.3f}  "
            + "  ".join(
                f"{r['method']} acc {r['accuracy']:.3f} err {r['output_error']:.3f}"
                for r in rows[-3:]
            ),
            flush=True,
        )
    return rows


# ============================================================================ ResNet-50 timing


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet50_like() -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, mid, stride if i == 0 else 1))
            cin = mid * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))


def time_resnet50() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        model = resnet50_like().eval()
        params = sum(p.numel() for p in model.parameters())
        convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        timings = {}
        for label, options in (
            ("exact", {}),
            ("rank=2", {"rank": 2}),
            ("budget=0.5", {"budget": 0.5, "input_size": (1, 3, 224, 224)}),
        ):
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                converted = sepconv.to_separable(model, **options)
                best = min(best, time.perf_counter() - start)
            kept = sum(p.numel() for p in converted.parameters()) / params
            timings[label] = {"seconds": best, "params_kept": kept}
            print(
                f"  ResNet-50-like ({params / 1e6:.1f}M params, {convs} convs), {label}: "
                f"{best:.2f} s on 2 threads, params kept {kept:.2f}",
                flush=True,
            )
        return {"params": params, "convs": convs, "threads": 2, "timings": timings}
    finally:
        torch.set_num_threads(threads)


# ============================================================================ main


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | setting | MACs kept | params kept | method | test acc | output err |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['macs_kept']:.3f} | {r['params_kept']:.3f} | "
            f"{r['method']} | {100 * r['accuracy']:.1f}% | {r['output_error']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        dense = next(r for r in rows if r["model"] == name and r["method"] == "dense")
        for method, marker in (("svd", "o"), ("calibrated", "s"), ("distilled", "^")):
            pts = sorted(
                (r["macs_kept"], r["accuracy"])
                for r in rows
                if r["model"] == name and r["method"] == method
            )
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker=marker, label=method)
        ax.axhline(100 * dense["accuracy"], color="gray", linestyle="--", label="dense")
        ax.set(title=name, xlabel="share of conv MACs kept", ylabel="test accuracy (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows: list[dict] = []

    data16 = load_digits(16)
    torch.manual_seed(0)
    vgg = vgg16px()
    train(vgg, data16[0], data16[1], epochs=15)
    rows += sweep("vgg16px", vgg, data16, (1, 1, 16, 16))

    try:
        from sepconv.models.digits import STEM, digits_cnn
    except ImportError:
        print("  sepconv.models.digits not available: digits CNN skipped")
    else:
        data8 = load_digits(8)
        torch.manual_seed(0)
        cnn = digits_cnn()
        train(cnn, data8[0], data8[1], epochs=20)
        rows += sweep("digits_cnn", cnn, data8, (1, 1, 8, 8), exclude=STEM)

    resnet = time_resnet50()
    print()
    print(markdown(rows))
    result = {"accuracy_vs_macs": rows, "resnet50": resnet}
    (out_dir / "conversion.json").write_text(json.dumps(result, indent=2))
    plot(rows, out_dir / "conversion.png")
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results"))
