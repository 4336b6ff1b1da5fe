"""Build norm and activation layers from a class, a string, a callable or an instance.

Accepted forms (as in timm's ``create_act_layer`` / ``get_norm_layer``):

- ``None``: no layer (``nn.Identity``);
- a string: ``"batchnorm"`` ("bn"), ``"instancenorm"`` ("in"), ``"groupnorm"`` ("gn"),
  ``"layernorm"`` ("ln", over channels only) for norms; ``"relu"``, ``"relu6"``,
  ``"silu"`` ("swish"), ``"gelu"``, ``"hardswish"``, ``"leaky_relu"``, ``"elu"``,
  ``"mish"``, ``"sigmoid"``, ``"tanh"``, ``"identity"`` for activations;
- an ``nn.Module`` class or a ``functools.partial`` of one: called with
  ``num_features`` (norms) or with nothing (activations);
- any other callable: a norm factory is called with ``num_features``; an
  activation function such as ``torch.relu`` is wrapped in a module;
- an ``nn.Module`` instance: deep-copied, so two layers never share state.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import torch
from torch import nn

LayerSpec = str | type | Callable[..., object] | nn.Module | None

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
    "hard_swish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "mish": nn.Mish,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "prelu": nn.PReLU,
    "identity": nn.Identity,
    "none": nn.Identity,
}


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dim of ``(N, C, *spatial)`` (as in ConvNeXt)."""

    def __init__(self, num_features: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(num_features, eps=eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial) -> (N, C, *spatial)``."""
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class FunctionActivation(nn.Module):
    """Wrap an activation function (``torch.relu``, ``F.gelu``...) as a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the function elementwise; shape unchanged."""
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def _norm_from_string(name: str, num_features: int, rank: int, device, dtype) -> nn.Module:
    key = name.lower().replace("-", "").replace("_", "")
    if key in ("batchnorm", "bn"):
        factory = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[rank]
        return factory(num_features, device=device, dtype=dtype)
    if key in ("instancenorm", "in"):
        factory = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[rank]
        return factory(num_features, affine=True, device=device, dtype=dtype)
    if key in ("groupnorm", "gn"):
        return nn.GroupNorm(math.gcd(32, num_features), num_features, device=device, dtype=dtype)
    if key in ("layernorm", "ln"):
        return ChannelLayerNorm(num_features, device=device, dtype=dtype)
    if key in ("none", "identity"):
        return nn.Identity()
    raise ValueError(
        f"norm layer {name!r} is not known; use one of 'batchnorm', 'instancenorm', 'groupnorm', "
        f"'layernorm', a class, or a callable"
    )


def create_norm(
    spec: LayerSpec,
    num_features: int,
    rank: int = 2,
    *,
    device=None,
    dtype=None,
    name: str = "norm_layer",
) -> nn.Module:
    """Build a norm layer for ``num_features`` channels of a rank-``rank`` conv output.

    Shapes: ``(N, num_features, *spatial) -> same``. ``device``/``dtype`` are passed on
    where the layer accepts them.
    """
    if spec is None:
        return nn.Identity()
    if isinstance(spec, str):
        return _norm_from_string(spec, num_features, rank, device, dtype)
    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec)
    if callable(spec):
        layer = _call_with_factory_kwargs(spec, num_features, device=device, dtype=dtype)
        if not isinstance(layer, nn.Module):
            raise TypeError(
                f"{name} factory {spec!r} returned {type(layer).__name__}, not an nn.Module"
            )
        return layer
    raise TypeError(f"{name} must be None, a string, a class or a callable, got {spec!r}")


def create_act(spec: LayerSpec, *, name: str = "act_layer") -> nn.Module:
    """Build an activation layer (shape unchanged) from a string, class, callable or instance."""
    if spec is None:
        return nn.Identity()
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key not in _ACTIVATIONS:
            raise ValueError(f"{name} {spec!r} is not known; use one of {sorted(_ACTIVATIONS)}")
        return _ACTIVATIONS[key]()
    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec)
    if _builds_module(spec):
        return spec()  # type: ignore[operator]
    if callable(spec):
        return FunctionActivation(spec)  # type: ignore[arg-type]
    raise TypeError(f"{name} must be None, a string, a class or a callable, got {spec!r}")


def _builds_module(spec: object) -> bool:
    """True for an ``nn.Module`` class or a partial of one."""
    target = spec.func if isinstance(spec, functools.partial) else spec
    return isinstance(target, type) and issubclass(target, nn.Module)


def _call_with_factory_kwargs(
    factory: Callable[..., object], num_features: int, **kwargs
) -> object:
    """Call ``factory(num_features, device=..., dtype=...)``, without the kwargs if it rejects them."""
    try:
        return factory(num_features, **kwargs)
    except TypeError:
        layer = factory(num_features)
        if isinstance(layer, nn.Module):
            layer.to(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        return layer
