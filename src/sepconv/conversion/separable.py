"""Dense to depthwise-separable: :func:`to_separable` and the calibrated least-squares refit."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from sepconv.conversion import _walk
from sepconv.conversion.decompose import Factors, factorize
from sepconv.conversion.plan import (
    CONV_TYPES,
    LayerPlan,
    Plan,
    eval_mode,
    plan_separable,
    run_model,
)
from sepconv.layers.separable import SeparableConv1d, SeparableConv2d, SeparableConv3d

SEPARABLE_TYPES = {1: SeparableConv1d, 2: SeparableConv2d, 3: SeparableConv3d}


def to_separable(
    model: nn.Module, plan: Plan | None = None, *, inplace: bool = False, **options: Any
) -> nn.Module:
    """Replace the model's dense convolutions by ``SeparableConvNd`` layers, as ``plan`` says.

    Args:
        model: the model to convert.
        plan: a :class:`Plan` from :func:`plan_separable` (possibly edited). Without one, the
            plan is made from ``options`` (the keyword arguments of :func:`plan_separable`:
            ``rank``, ``energy``, ``budget``, ``include``, ``exclude``, ``calibration``,
            ``input_size``, ``skip_costlier``, ``ridge``).
        inplace: modify ``model`` itself; by default a converted deep copy is returned and
            ``model`` is left untouched.

    Each converted layer is a ``SeparableConvNd`` with the dense layer's stride, padding,
    padding mode and dilation, ``depth_multiplier`` = its rank, ``pointwise_groups`` = its
    groups, no depthwise bias and the dense bias on the pointwise stage. Its weights come from
    the per-input-channel SVD of the dense weight (see :mod:`sepconv.conversion.decompose`);
    with calibration data, every pointwise weight and bias is then refit by ridge-regularised
    least squares to the dense layer's outputs on the layer's real inputs (the table then
    shows the output error before and after the refit). Shared convolutions are converted
    once and stay shared.

    Returns the converted model (``model`` itself when ``inplace``, and the new layer when
    ``model`` is itself a conv). Raises ValueError for NaN/Inf weights (naming the layer),
    for conflicting options, or when ``plan`` does not fit ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    if plan is None:
        plan = plan_separable(model, **options)
    elif options:
        raise ValueError(
            f"give either a plan or planning options, not both (got {', '.join(sorted(options))})"
        )
    elif not isinstance(plan, Plan):
        raise TypeError(
            f"plan must be a sepconv.Plan from plan_separable(), got {type(plan).__name__}"
        )

    work = model if inplace else copy.deepcopy(model)
    if not plan.converted:
        return work
    sites: dict[str, _walk.Site] = {}
    for site in _walk.walk(work):
        if isinstance(site.module, CONV_TYPES):
            for name in site.names:
                sites.setdefault(name, site)

    jobs: list[tuple[_walk.Site, LayerPlan, nn.Module]] = []
    done: set[int] = set()
    for layer in plan.converted:
        site = next((sites[name] for name in layer.aliases if name in sites), None)
        if site is None:
            raise ValueError(
                f"the plan does not fit this model: it has no convolution named "
                f"{_walk.display_name(layer.name)!r}"
            )
        if id(site.module) in done:
            continue
        conv = site.module
        if (conv.in_channels, conv.out_channels, tuple(conv.kernel_size), conv.groups) != (
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.groups,
        ):
            raise ValueError(
                f"the plan does not fit this model: {_walk.display_name(layer.name)!r} is "
                f"{_walk.geometry_text(conv)}, the plan says {layer.geometry}"
            )
        _walk.check_finite(conv, layer.name)
        factors = _factors_for(layer, conv)
        new = build_separable(conv, factors, layer._rank, keep_bias=plan.calibration is not None)
        jobs.append((site, layer, new))
        done.add(id(conv))

    if plan.calibration is not None:
        refit(
            work,
            [(site.module, layer, new) for site, layer, new in jobs],
            plan.calibration,
            plan.ridge,
        )
    for site, _, new in jobs:
        work = _walk.replace(site, new, work)
    return work


def _factors_for(layer: LayerPlan, conv: nn.Module) -> Factors:
    """Reuse the plan's SVD when ``conv`` holds the weight it was computed from."""
    source = layer._module
    if source is not None and (
        source is conv
        or (
            source.weight.shape == conv.weight.shape
            and torch.equal(source.weight.detach(), conv.weight.detach())
        )
    ):
        return layer.factors
    return factorize(conv.weight, conv.groups)


def build_separable(
    conv: nn.Module, factors: Factors, rank: int, *, keep_bias: bool = False
) -> nn.Module:
    """The ``SeparableConvNd`` of rank ``rank`` for a dense ``conv`` with SVD ``factors``."""
    weight = conv.weight
    cls = SEPARABLE_TYPES[weight.dim() - 2]
    layer = cls(
        conv.in_channels,
        conv.out_channels,
        tuple(conv.kernel_size),
        tuple(conv.stride),
        _walk.padding_spec(conv),
        tuple(conv.dilation),
        depth_multiplier=rank,
        bias=True,
        padding_mode=conv.padding_mode,
        pointwise_groups=conv.groups,
        device=weight.device,
        dtype=weight.dtype,
    )
    layer.depthwise.register_parameter("bias", None)
    depthwise, pointwise = factors.weights(rank, weight.dtype)
    with torch.no_grad():
        layer.depthwise.weight.copy_(depthwise)
        layer.pointwise.weight.copy_(pointwise)
        if conv.bias is not None:
            layer.pointwise.bias.copy_(conv.bias.detach())
        elif keep_bias:
            layer.pointwise.bias.zero_()
    if conv.bias is None and not keep_bias:
        layer.pointwise.register_parameter("bias", None)
    for param in layer.parameters():
        param.requires_grad_(weight.requires_grad)
    layer.train(conv.training)
    return layer


# ============================================================================ refit


class _Normal:
    """Running normal equations of one layer's pointwise least-squares problem, per group."""

    def __init__(self, layer: nn.Module) -> None:
        pw = layer.pointwise
        self.groups = pw.groups
        self.mid = pw.in_channels // self.groups
        self.outs = pw.out_channels // self.groups
        weight = pw.weight.detach().to(torch.float64).reshape(self.groups, self.outs, self.mid)
        bias = (
            pw.bias.detach().to(torch.float64)
            if pw.bias is not None
            else weight.new_zeros(pw.out_channels)
        ).reshape(self.groups, 1, self.outs)
        self.x0 = torch.cat([weight.transpose(1, 2), bias], dim=1)  # (G, mid+1, outs)
        self.a = weight.new_zeros(self.groups, self.mid + 1, self.mid + 1)
        self.b = weight.new_zeros(self.groups, self.mid + 1, self.outs)
        self.yy = 0.0
        self.err0 = 0.0
        self.count = 0

    def add(self, z: Tensor, y: Tensor, chunk: int = 1 << 22) -> None:
        """Accumulate depthwise outputs ``z`` ``(N, C*R, *S)`` against dense outputs ``y`` ``(N, O, *S)``."""
        if z.device != self.a.device:
            self.a, self.b, self.x0 = self.a.to(z.device), self.b.to(z.device), self.x0.to(z.device)
        g = self.groups
        zf = z.detach().to(torch.float64).transpose(0, 1).reshape(g, self.mid, -1)
        yf = y.detach().to(torch.float64).transpose(0, 1).reshape(g, self.outs, -1)
        n = zf.shape[-1]
        step = max(1, chunk // max(1, g * (self.mid + 1)))
        for start in range(0, n, step):
            zc = zf[..., start : start + step]
            yc = yf[..., start : start + step]
            zaug = torch.cat([zc, zc.new_ones(g, 1, zc.shape[-1])], dim=1)  # (G, mid+1, n)
            self.a += zaug @ zaug.transpose(1, 2)
            self.b += zaug @ yc.transpose(1, 2)
            self.yy += float(yc.square().sum())
            pred = self.x0.transpose(1, 2) @ zaug  # (G, outs, n)
            self.err0 += float((pred - yc).square().sum())
        self.count += 1

    def solve(self, ridge: float) -> Tensor:
        diag = torch.diagonal(self.a, dim1=1, dim2=2)[:, : self.mid]  # (G, mid)
        scale = diag.mean(dim=1).clamp_min(0) * ridge + 1e-12 * (1 + diag.abs().max(dim=1).values)
        reg = torch.zeros_like(self.a)
        idx = torch.arange(self.mid, device=self.a.device)
        reg[:, idx, idx] = scale[:, None]
        lhs = self.a + reg
        rhs = self.b + reg @ self.x0
        try:
            x = torch.linalg.solve(lhs, rhs)
        except RuntimeError:
            x = torch.linalg.lstsq(lhs, rhs).solution
        if not bool(torch.isfinite(x).all()):
            return self.x0
        return x

    def error(self, x: Tensor) -> float:
        """Squared output error of solution ``x`` on the accumulated data (closed form)."""
        quad = float((x * (self.a @ x)).sum())
        lin = float((x * self.b).sum())
        return max(quad - 2 * lin + self.yy, 0.0)


def refit(
    model: nn.Module,
    jobs: list[tuple[nn.Module, LayerPlan, nn.Module]],
    batches: list,
    ridge: float,
) -> None:
    """Refit each new layer's pointwise stage to its dense conv's outputs on ``batches``.

    ``jobs`` holds ``(dense conv in model, plan row, new separable layer)``. The model runs
    (dense, in eval mode) on every batch; hooks on the dense convs feed each layer's real
    input through the new depthwise stage and accumulate the normal equations of
    ``min ||P z + b - y||^2 + lam ||P - P_svd||^2``, solved in closed form afterwards.
    """
    normals: dict[int, _Normal] = {}
    handles = []

    def make_hook(new: nn.Module, normal: _Normal):
        def hook(module, inputs, output):
            x = inputs[0]
            if x.dim() == module.weight.dim() - 1:
                x, output = x.unsqueeze(0), output.unsqueeze(0)
            normal.add(new.depthwise(x), output)

        return hook

    for conv, _, new in jobs:
        normal = normals[id(conv)] = _Normal(new)
        handles.append(conv.register_forward_hook(make_hook(new, normal)))
    try:
        with eval_mode(model):
            for item in batches:
                run_model(model, item)
    finally:
        for handle in handles:
            handle.remove()

    for conv, layer, new in jobs:
        normal = normals[id(conv)]
        if normal.count == 0 or normal.yy == 0.0:
            continue
        x = normal.solve(ridge)
        layer.output_error = (normal.err0 / normal.yy) ** 0.5
        layer.calibrated_error = (normal.error(x) / normal.yy) ** 0.5
        pw = new.pointwise
        g, mid, outs = normal.groups, normal.mid, normal.outs
        weight = x[:, :mid, :].transpose(1, 2).reshape(g * outs, mid, *pw.weight.shape[2:])
        bias = x[:, mid, :].reshape(g * outs)
        with torch.no_grad():
            pw.weight.copy_(weight.to(device=pw.weight.device, dtype=pw.weight.dtype))
            pw.bias.copy_(bias.to(device=pw.bias.device, dtype=pw.bias.dtype))
