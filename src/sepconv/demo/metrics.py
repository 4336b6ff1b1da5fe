"""What the demo measures: parameters, MACs per image, forward latency per batch, accuracy.

MACs are counted from the shapes a real forward pass produces, with the formulas of
:mod:`sepconv.cost` (one MAC = one multiply-add; convolutions and linear layers only --
norms, activations and pooling are not counted). A separable layer counts as its
depthwise plus its pointwise stage, whichever code path runs it.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import Tensor, nn

from sepconv import cost
from sepconv.layers.separable import _SeparableBase, _SeparableConvNd


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def _separable_macs(module: _SeparableBase, x: Tensor, out: Tensor) -> int:
    dw, pw = module.depthwise, module.pointwise
    k = math.prod(dw.kernel_size)
    mid = dw.out_channels
    out_positions = math.prod(out.shape[2:])
    if isinstance(module, _SeparableConvNd):
        depthwise = out_positions * mid * k
    else:  # transposed depthwise stage: every input element meets every tap once
        depthwise = math.prod(x.shape[2:]) * mid * k
    pointwise = out_positions * pw.out_channels * (mid // pw.groups)
    return out.shape[0] * (depthwise + pointwise)


def _conv_macs(module: nn.modules.conv._ConvNd, x: Tensor, out: Tensor) -> int:
    if module.transposed:
        return cost.conv_transpose_macs(
            module.in_channels,
            module.out_channels,
            tuple(module.kernel_size),
            tuple(x.shape[2:]),
            groups=module.groups,
            batch=x.shape[0],
        )
    return cost.conv_macs(
        module.in_channels,
        module.out_channels,
        tuple(module.kernel_size),
        tuple(out.shape[2:]),
        groups=module.groups,
        batch=out.shape[0],
    )


@torch.no_grad()
def count_macs(model: nn.Module, example: Tensor) -> int:
    """MACs of one forward pass of ``example`` (a batch; pass one image for MACs per image).

    Counts ``nn.ConvNd`` (plain, grouped, depthwise, transposed), sepconv's separable layers
    (depthwise + pointwise) and ``nn.Linear``. The model's training flag is restored.
    """
    total = 0
    handles = []

    def hook(module: nn.Module, inputs: tuple, out: Tensor) -> None:
        nonlocal total
        x = inputs[0]
        if isinstance(module, _SeparableBase):
            total += _separable_macs(module, x, out)
        elif isinstance(module, nn.modules.conv._ConvNd):
            total += _conv_macs(module, x, out)
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features

    def visit(module: nn.Module) -> None:
        if isinstance(module, _SeparableBase | nn.modules.conv._ConvNd | nn.Linear):
            handles.append(module.register_forward_hook(hook))
            if isinstance(module, _SeparableBase):
                return  # its stages are counted by the parent, whichever path it takes
        for child in module.children():
            visit(child)

    visit(model)
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
