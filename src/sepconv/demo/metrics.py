"""What the demo measures: parameters, MACs per image, forward latency per batch, accuracy.

MACs are counted from the shapes a real forward pass produces, with the formulas of
:mod:`sepconv.cost` (one MAC = one multiply-add; convolutions and linear layers only --
norms, activations and pooling are not counted). A separable layer counts as its
depthwise plus its pointwise stage, whichever code path runs it.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn

from sepconv.analysis import counting


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example: Tensor) -> int:
    """MACs of one forward pass of ``example`` (a batch; pass one image for MACs per image).

    Counts every ``nn.ConvNd`` (plain, grouped, depthwise, transposed) and ``nn.Linear`` call,
    with :func:`sepconv.analysis.counting.macs_of`. A separable layer counts as its two
    stages: while they are hooked it calls them one by one instead of fusing them.
    The model's training flag is restored.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, out: Tensor) -> None:
        nonlocal total
        total += counting.macs_of(module, inputs, out)

    counted = (nn.modules.conv._ConvNd, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total)


@torch.inference_mode()
def measure_latency(model: nn.Module, batch: Tensor, *, warmup: int = 3, repeat: int = 15) -> float:
    """Median wall time in seconds of ``model(batch)`` in eval mode (after ``warmup`` calls)."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(batch)
        times = []
        for _ in range(max(1, repeat)):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)
