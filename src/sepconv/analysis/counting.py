"""What one layer call costs: its kind, parameters, MACs and a lower bound on memory traffic.

Conventions (the same as :mod:`sepconv.cost`):

- one MAC is one multiply and one add; ``torch.utils.flop_counter.FlopCounterMode`` counts
  2 FLOPs per MAC, and on convolutions (every kind) and linear layers the counts here agree
  with it exactly. Bias additions are not counted, as FlopCounterMode does not count them;
- normalisation layers count 1 MAC per output element (the scale and shift of inference),
  average pooling 1 MAC per tap it reads; activations, max pooling and copies count 0.
  FlopCounterMode counts 0 for all of these;
- ``bytes`` is a lower bound on memory traffic: every input read once, every output written
  once, every parameter and buffer read once, at their dtypes. For a fused
  :class:`~sepconv.SeparableConv2d` it does not include the depthwise stage's output, which a
  fused kernel need not write to memory (PyTorch's unfused path writes and reads it once more).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor, nn

from sepconv import cost
from sepconv.layers import conv as sep_convs
from sepconv.layers import separable as sep_separable
from sepconv.layers import transpose as sep_transpose

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Threshold,
    nn.GLU,
    nn.LogSigmoid,
)
_MAX_POOLS = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
)
_AVG_POOLS = (nn.modules.pooling._AvgPoolNd,)
_ADAPTIVE_AVG_POOLS = (nn.modules.pooling._AdaptiveAvgPoolNd,)
# Leaves that do no work: they are not rows of a report.
_NO_WORK = (nn.Identity, nn.Flatten, nn.Unflatten)
_DEPTHWISE = (sep_convs._DepthwiseMixin, sep_transpose._DepthwiseTransposeMixin)
_POINTWISE = (sep_convs._PointwiseMixin,)

SEPARABLE_TYPES = (sep_separable._SeparableConvNd,)
"""Layers whose forward runs a fused functional instead of calling their conv children."""


def does_work(module: nn.Module) -> bool:
    """False for leaves that only pass their input on (identity, flatten, dropout in eval)."""
    if isinstance(module, _NO_WORK):
        return False
    return not (isinstance(module, nn.modules.dropout._DropoutNd) and not module.training)


def kind_of(module: nn.Module) -> str:
    """A short name for what ``module`` computes.

    One of ``conv``, ``grouped``, ``depthwise``, ``pointwise``, ``conv-transpose``,
    ``depthwise-transpose``, ``separable``, ``linear``, ``norm``, ``activation``, ``pooling``,
    ``other``.
    """
    if isinstance(module, SEPARABLE_TYPES):
        return "separable"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "depthwise-transpose" if _is_depthwise(module) else "conv-transpose"
    if isinstance(module, nn.modules.conv._ConvNd):
        if _is_depthwise(module):
            return "depthwise"
        if isinstance(module, _POINTWISE) or all(k == 1 for k in module.kernel_size):
            return "pointwise"
        return "grouped" if module.groups > 1 else "conv"
    if isinstance(module, nn.Linear | nn.Bilinear):
        return "linear"
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, _ACTIVATIONS):
        return "activation"
    if isinstance(module, _MAX_POOLS + _AVG_POOLS + _ADAPTIVE_AVG_POOLS):
        return "pooling"
    return "other"


def _is_depthwise(module: nn.modules.conv._ConvNd) -> bool:
    return isinstance(module, _DEPTHWISE) or (
        module.groups > 1 and module.groups == module.in_channels
    )


def macs_of(module: nn.Module, inputs: Iterable[Tensor], output: Tensor | None) -> int:
    """MACs of one call of ``module`` that read ``inputs`` and returned ``output``."""
    tensors = [t for t in inputs if isinstance(t, Tensor)]
    if not tensors or output is None:
        return 0
    x = tensors[0]
    if isinstance(module, SEPARABLE_TYPES):
        return separable_macs(module, x, output)
    if isinstance(module, nn.modules.conv._ConvNd):
        return conv_macs(module, x, output)
    if isinstance(module, nn.Linear):
        return (x.numel() // max(module.in_features, 1)) * module.in_features * module.out_features
    if isinstance(module, nn.Bilinear):
        return (
            (output.numel() // module.out_features)
            * module.out_features
            * module.in1_features
            * (module.in2_features + 1)
        )
    if isinstance(module, _NORMS):
        return output.numel()
    if isinstance(module, _AVG_POOLS):
        rank = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}.get(type(module), 1)
        kernel = module.kernel_size
        return output.numel() * math.prod((kernel,) * rank if isinstance(kernel, int) else kernel)
    if isinstance(module, _ADAPTIVE_AVG_POOLS):
        return x.numel()
    return 0


def conv_macs(module: nn.modules.conv._ConvNd, x: Tensor, output: Tensor) -> int:
    """MACs of an ``nn.ConvNd`` or ``nn.ConvTransposeNd`` call (via :mod:`sepconv.cost`)."""
    rank = len(module.kernel_size)
    batch = x.shape[0] if x.dim() == rank + 2 else 1
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return cost.conv_transpose_macs(
            module.in_channels,
            module.out_channels,
            tuple(module.kernel_size),
            tuple(x.shape[-rank:]),
            groups=module.groups,
            batch=batch,
        )
    return cost.conv_macs(
        module.in_channels,
        module.out_channels,
        tuple(module.kernel_size),
        tuple(output.shape[-rank:]),
        groups=module.groups,
        batch=batch,
    )


def separable_macs(module: sep_separable._SeparableConvNd, x: Tensor, output: Tensor) -> int:
    """Depthwise plus pointwise MACs of a separable layer's fused conv stages, and one a
    depthwise output element for a norm between them (as :func:`macs_of` counts a norm
    module; the fused kernels fold it into the depthwise weights, but the count is the
    model's, whichever way it runs)."""
    dw, pw = module.depthwise, module.pointwise
    rank = len(dw.kernel_size)
    batch = x.shape[0] if x.dim() == rank + 2 else 1
    out = tuple(output.shape[-rank:])
    norm = batch * dw.out_channels * math.prod(out) if isinstance(module.mid_norm, _NORMS) else 0
    return (
        cost.conv_macs(
            dw.in_channels,
            dw.out_channels,
            tuple(dw.kernel_size),
            out,
            groups=dw.groups,
            batch=batch,
        )
        + cost.conv_macs(
            pw.in_channels, pw.out_channels, (1,) * rank, out, groups=pw.groups, batch=batch
        )
        + norm
    )


def separable_modules(module: sep_separable._SeparableConvNd) -> tuple[nn.Module, ...]:
    """The stages whose weights (and buffers) a fused separable call reads: the convolutions
    and the modules between them."""
    return module.depthwise, module.mid_norm, module.mid_act, module.pointwise


def params_of(modules: Iterable[nn.Module]) -> int:
    """Number of parameters the modules hold (each parameter once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def weight_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the parameters and buffers the modules hold (each once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def tensor_bytes(tensors: Iterable[object]) -> int:
    """Bytes of the distinct tensors among ``tensors``."""
    seen: dict[tuple[int, int, tuple[int, ...]], int] = {}
    for t in tensors:
        if isinstance(t, Tensor):
            seen[(t.data_ptr(), t.dtype.itemsize, tuple(t.shape))] = t.numel() * t.element_size()
    return sum(seen.values())


def flat_tensors(value: object) -> list[Tensor]:
    """Every tensor in a (nested) tuple, list or dict, in order."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for item in value for t in flat_tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in flat_tensors(item)]
    return []


__all__ = [
    "SEPARABLE_TYPES",
    "conv_macs",
    "does_work",
    "flat_tensors",
    "kind_of",
    "macs_of",
    "params_of",
    "separable_macs",
    "tensor_bytes",
    "weight_bytes",
]
