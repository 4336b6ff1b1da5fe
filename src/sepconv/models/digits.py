"""The demo's data and network: scikit-learn's bundled 8x8 handwritten digits and a small CNN.

Everything here is deterministic for a given seed (data split, data order, augmentation,
init), runs on CPU in seconds, and needs no download: ``sklearn.datasets.load_digits``
ships its 1,797 images inside scikit-learn.

- :func:`load_digits_split` -- a stratified train/test split as tensors ``(N, 1, 8, 8)``.
- :func:`digits_cnn` -- the standard CNN (3x3 convs, BatchNorm, ReLU, a linear classifier),
  or the same network built from :class:`sepconv.SeparableConv2d` layers (``separable=True``).
- :func:`train` / :func:`evaluate` -- plain supervised training (also under
  ``torchrun``/DistributedDataParallel) and test accuracy.
- :func:`batches` -- the inputs in fixed-order batches, e.g. as calibration data.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepconv.layers.separable import SeparableConv2d

NUM_CLASSES = 10
# The stem conv, which the demo keeps dense (as MobileNets do): ``exclude=STEM``.
STEM = "features.0"
IMAGE_SIZE = 8


@dataclass(frozen=True)
class DigitsSplit:
    """Train and test tensors: images ``(N, 1, 8, 8)`` float32, standardised with the
    training set's mean and std; labels ``(N,)`` int64 in 0..9."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    mean: float
    std: float

    @property
    def background(self) -> float:
        """The standardised value of a blank pixel (raw 0)."""
        return -self.mean / self.std


def load_digits_split(seed: int = 0, test_size: float = 0.2) -> DigitsSplit:
    """scikit-learn's digits (1,797 images), split stratified by class with ``seed``.

    ``test_size=0.2`` gives 1,437 training and 360 test images. Pixel values (0..16) are
    scaled to 0..1, then standardised with the training set's mean and std.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype("float32") / 16.0).unsqueeze(1)
    labels = torch.from_numpy(data.target.astype("int64"))
    index = torch.arange(len(labels)).numpy()
    train_idx, test_idx = train_test_split(
        index, test_size=test_size, random_state=seed, stratify=labels.numpy()
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    x_train, x_test = images[train_idx], images[test_idx]
    mean, std = float(x_train.mean()), float(x_train.std())
    return DigitsSplit(
        (x_train - mean) / std,
        labels[train_idx],
        (x_test - mean) / std,
        labels[test_idx],
        mean,
        std,
    )


def digits_cnn(
    width: int = 32,
    *,
    separable: bool = False,
    rank: int = 2,
    num_classes: int = NUM_CLASSES,
    in_chans: int = 1,
) -> nn.Sequential:
    """The demo's CNN for 8x8 inputs: ``(N, in_chans, 8, 8) -> (N, num_classes)``.

    Three 3x3 conv-BatchNorm-ReLU blocks (``width``, ``2*width``, ``4*width`` channels; a 2x2
    max-pool after the second), global average pooling and a linear classifier.
    With ``separable=True`` each 3x3 conv but the first (the stem, which reads one channel and
    costs under 1% of the MACs) is a :class:`sepconv.SeparableConv2d` with
    ``depth_multiplier=rank`` -- the shape ``sepconv.to_separable(model, rank=rank,
    exclude=STEM)`` gives the converted network -- for training the separable network from scratch.

    Layout: ``features`` (``Sequential`` of ``Sequential(conv, norm, act)`` blocks and the
    pool), ``pool``, ``flatten``, ``classifier``. Init: PyTorch's defaults for the dense
    convs; :mod:`sepconv.layers.init` (per-stage fan-in) for the separable ones.
    """

    def block(cin: int, cout: int, stem: bool = False) -> nn.Sequential:
        if separable and not stem:
            conv: nn.Module = SeparableConv2d(
                cin, cout, 3, padding=1, depth_multiplier=rank, bias=False
            )
        else:
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())

    w = width
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(
                block(in_chans, w, stem=True), block(w, 2 * w), nn.MaxPool2d(2), block(2 * w, 4 * w)
            ),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(4 * w, num_classes),
        )
    )


def batches(x: Tensor, batch_size: int = 256, *, limit: int | None = None) -> list[Tensor]:
    """``x`` cut into consecutive batches (the last may be smaller), at most ``limit`` samples."""
    if limit is not None:
        x = x[:limit]
    return list(torch.split(x, batch_size))


def random_shift(x: Tensor, generator: torch.Generator, fill: float, max_shift: int = 1) -> Tensor:
    """Shift each image by a random whole number of pixels in ``-max_shift..max_shift`` per axis,
    filling with ``fill``; deterministic given ``generator``. ``(N, C, H, W) -> (N, C, H, W)``."""
    n, _, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), value=fill)
    shifts = torch.randint(0, 2 * m + 1, (n, 2), generator=generator)
    out = torch.empty_like(x)
    for dy in range(2 * m + 1):
        for dx in range(2 * m + 1):
            chosen = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if chosen.any():
                out[chosen] = padded[chosen, :, dy : dy + h, dx : dx + w]
    return out


def epoch_batches(
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    epoch: int,
    seed: int,
    augment: bool = True,
    fill: float = 0.0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of training batches: a fixed permutation per ``(seed, epoch)``, full batches
    only, each shifted by up to 1 pixel when ``augment``. Every process that asks gets the
    same global batches (slice them per rank for data parallelism)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx]
        if augment:
            xb = random_shift(xb, generator, fill)
        yield xb, y[idx]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 20,
    lr: float = 0.01,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    seed: int = 0,
    augment: bool = True,
    fill: float = 0.0,
    on_step: Callable[[float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``(x, y)`` with cross-entropy; returns the mean loss per epoch.

    AdamW with a one-cycle learning-rate schedule (peak ``lr``), global batch ``batch_size``,
    fixed data order and augmentation from ``seed``. Under an initialised process group
    (``torchrun``) the model is wrapped in DistributedDataParallel and each of the ``W``
    processes takes ``batch_size / W`` samples of every global batch, so the optimiser
    sees the same global batches as in one process. ``on_step(loss)`` is called after
    every step (e.g. to advance a progress bar). The model is left in eval mode.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    rank, size = world()
    if batch_size % size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the world size {size}")
    net: nn.Module = model
    if size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    steps = len(x) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.25
    )
    losses = []
    for epoch in range(epochs):
        net.train()
        total = 0.0
        for xb, yb in epoch_batches(
            x, y, batch_size=batch_size, epoch=epoch, seed=seed, augment=augment, fill=fill
        ):
            loss = F.cross_entropy(net(xb[rank::size]), yb[rank::size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = loss.item()
            total += value
            if on_step is not None:
                on_step(value)
        losses.append(total / max(1, steps))
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Accuracy (0..1) of ``model`` in eval mode on ``(x, y)``; restores the training flag."""
    was_training = model.training
    model.eval()
    correct = 0
    for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size)):
        correct += int((model(xb).argmax(1) == yb).sum())
    model.train(was_training)
    return correct / max(1, len(y))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of :func:`train` (full batches only)."""
    return max(0, math.floor(n / batch_size))
