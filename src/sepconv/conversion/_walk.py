"""Finding convolutions in a model and replacing them, shared modules included.

A module reachable under several names (the same instance assigned twice) is found
once, under the first name in registration order; its other names are its aliases,
and a replacement is assigned under every one of them, so it stays shared.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from sepconv.layers import conv as sep_convs
from sepconv.layers.separable import _SeparableBase

DENSE_TYPES: dict[type, int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
PADDED_TYPES: dict[type, int] = {
    sep_convs.PaddedConv1d: 1,
    sep_convs.PaddedConv2d: 2,
    sep_convs.PaddedConv3d: 3,
}


@dataclass
class Site:
    """One module instance and every ``(parent, attribute)`` that holds it."""

    module: nn.Module
    names: list[str] = field(default_factory=list)
    slots: list[tuple[nn.Module | None, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.names[0]


def walk(model: nn.Module, *, into_separable: bool = False) -> list[Site]:
    """Every submodule (the model itself first), deduplicated, with all names that reach it.

    Submodules of sepconv's separable layers are not visited unless ``into_separable``.
    """
    sites: dict[int, Site] = {}

    def visit(
        module: nn.Module, parent: nn.Module | None, attr: str, name: str, depth: int
    ) -> None:
        site = sites.get(id(module))
        first = site is None
        if site is None:
            site = sites[id(module)] = Site(module)
        site.names.append(name)
        site.slots.append((parent, attr))
        if not first or depth > 200:
            return
        if isinstance(module, _SeparableBase) and not into_separable:
            return
        for child_attr, child in module._modules.items():
            if child is not None:
                visit(
                    child,
                    module,
                    child_attr,
                    f"{name}.{child_attr}" if name else child_attr,
                    depth + 1,
                )

    visit(model, None, "", "", 0)
    return list(sites.values())


def iter_sites(model: nn.Module, kind: type | tuple[type, ...], **kwargs) -> Iterator[Site]:
    for site in walk(model, **kwargs):
        if isinstance(site.module, kind):
            yield site


def replace(site: Site, new: nn.Module, root: nn.Module) -> nn.Module:
    """Put ``new`` wherever ``site.module`` was; returns the (possibly new) root."""
    for parent, attr in site.slots:
        if parent is None:
            root = new
        else:
            parent._modules[attr] = new
    return root


def display_name(name: str) -> str:
    return name or "(model)"


def conv_rank(module: nn.Module) -> int:
    return module.weight.dim() - 2


def padding_spec(conv: nn.Module) -> object:
    """The padding argument that rebuilds ``conv``'s padding: sepconv's spec or nn.ConvNd's."""
    spec = getattr(conv, "padding_spec", None)
    if spec is not None and hasattr(conv, "_plan"):
        return spec
    return conv.padding


def _fmt(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(str(v) for v in values)


def geometry_text(conv: nn.Module) -> str:
    """``3→8 3x3 s2 g2``-style shape summary of a conv."""
    text = f"{conv.in_channels}→{conv.out_channels} " + "x".join(str(k) for k in conv.kernel_size)
    if any(s != 1 for s in conv.stride):
        text += f" s{_fmt(conv.stride)}"
    if any(d != 1 for d in conv.dilation):
        text += f" d{_fmt(conv.dilation)}"
    if conv.groups != 1:
        text += f" g{conv.groups}"
    return text


def check_finite(conv: nn.Module, name: str) -> None:
    """ValueError naming ``name`` if the conv's weight or bias holds NaN or Inf."""
    for what in ("weight", "bias"):
        tensor = getattr(conv, what, None)
        if tensor is None or isinstance(tensor, nn.parameter.UninitializedParameter):
            continue
        if not bool(torch.isfinite(tensor.detach()).all()):
            bad = int((~torch.isfinite(tensor.detach())).sum())
            raise ValueError(
                f"layer {display_name(name)!r} has {bad} NaN/Inf value(s) in its {what}"
            )


def prod(values) -> int:
    return int(math.prod(values))
