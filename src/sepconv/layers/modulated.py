"""Modulated depthwise-separable convolution layer for style-based generators (StyleGAN2-style).

``ModulatedSeparableConv2d(C, O, k, style_dim)`` replaces StyleGAN2's modulated dense ``k x k``
conv (as MobileStyleGAN does) with a depthwise ``k x k`` stage and a pointwise ``1 x 1`` stage
whose weights are scaled per sample by the style. See
:func:`sepconv.functional.modulated.modulated_separable_conv2d` for the maths.

Parameters follow StyleGAN2's equalized learning rate: every weight is stored as ``N(0, 1)``
and multiplied at run time by ``1/sqrt(fan_in)`` of its own stage (``1/sqrt(kH*kW)`` for the
depthwise stage, ``1/sqrt(C*M)`` for the pointwise one, ``1/sqrt(style_dim)`` for the affine
map), so without demodulation a unit-variance input with styles near 1 gives outputs of about
unit variance, and with it exactly so.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sepconv import _validation as check
from sepconv.functional.modulated import modulated_separable_conv2d
from sepconv.functional.padding import PaddingSpec, resolve_padding

__all__ = ["EqualLinear", "ModulatedSeparableConv2d"]


class EqualLinear(nn.Module):
    """Linear map with equalized learning rate (StyleGAN's ``EqualLinear`` / ``FullyConnectedLayer``).

    ``y = x @ (weight * lr_multiplier / sqrt(in_features)).T + bias * lr_multiplier`` with
    ``weight ~ N(0, 1/lr_multiplier^2)`` and ``bias = bias_init / lr_multiplier`` at init.
    Shapes: ``(N, in_features) -> (N, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check.positive_int(in_features, "in_features")
        self.out_features = check.positive_int(out_features, "out_features")
        self.bias_init = float(bias_init)
        self.lr_multiplier = float(lr_multiplier)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weight, 0.0, 1.0 / self.lr_multiplier)
            self.bias.fill_(self.bias_init / self.lr_multiplier)

    def forward(self, x: Tensor) -> Tensor:
        gain = self.lr_multiplier / math.sqrt(self.in_features)
        return torch.nn.functional.linear(x, self.weight * gain, self.bias * self.lr_multiplier)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias_init={self.bias_init}, lr_multiplier={self.lr_multiplier}"
        )


class ModulatedSeparableConv2d(nn.Module):
    """Style-modulated depthwise-separable 2d convolution, with StyleGAN2 demodulation.

    Args:
        in_channels: ``C``. out_channels: ``O``. kernel_size: of the depthwise stage.
        style_dim: width of the style vector ``w``.
        demodulate: normalise each output channel per sample by the norm of its combined
            (pointwise x depthwise, modulated) weight: unit-variance in, unit-variance out.
        depth_multiplier: ``M``; the depthwise stage has ``C*M`` outputs.
        padding: ``"same"`` (default), ``"valid"``, an int or a tuple; with
            ``upsample=True`` only ``"same"``.
        upsample: the depthwise stage is a stride-2 transposed conv, output ``(2H, 2W)``.
        eps: of the demodulation, ``rsqrt(sum W^2 + eps)``.
        fused_modconv: True folds the styles into per-sample weights and runs grouped
            convolutions, False scales the activations instead (same result); None (default)
            picks True for contiguous inputs and False for channels_last ones.

    Submodules/parameters: ``affine`` (:class:`EqualLinear` ``style_dim -> C``, bias init 1),
    ``depthwise_weight`` ``(C*M, 1, kH, kW)``, ``pointwise_weight`` ``(O, C*M, 1, 1)``.
    No bias: as in StyleGAN2, add bias, noise and activation after this layer.

    ``forward(x, style)``: ``x`` ``(N, C, H, W)``, ``style`` ``(N, style_dim)`` ->
    ``(N, O, H, W)`` (``(N, O, 2H, 2W)`` with ``upsample``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        style_dim: int,
        *,
        demodulate: bool = True,
        depth_multiplier: int = 1,
        padding: PaddingSpec = "same",
        upsample: bool = False,
        eps: float = 1e-8,
        fused_modconv: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check.positive_int(in_channels, "in_channels")
        self.out_channels = check.positive_int(out_channels, "out_channels")
        self.style_dim = check.positive_int(style_dim, "style_dim")
        self.depth_multiplier = check.positive_int(depth_multiplier, "depth_multiplier")
        self.kernel_size = check.int_tuple(kernel_size, 2, "kernel_size")
        for name, flag in (
            ("demodulate", demodulate),
            ("upsample", upsample),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if fused_modconv is not None and not isinstance(fused_modconv, bool):
            raise TypeError(f"fused_modconv must be a bool or None, got {fused_modconv!r}")
        if upsample and padding != "same":
            raise ValueError(
                f"upsample=True fixes the geometry (output 2H x 2W): padding must be 'same', got {padding!r}"
            )
        if not upsample:
            resolve_padding(
                padding, self.kernel_size, (1, 1), (1, 1)
            )  # validate now, not at first call
        if not (isinstance(eps, int | float) and eps >= 0):
            raise ValueError(f"eps must be a non-negative float, got {eps!r}")
        self.demodulate, self.upsample, self.fused_modconv = demodulate, upsample, fused_modconv
        self.padding, self.eps = padding, float(eps)
        mid = in_channels * depth_multiplier
        kw = {"device": device, "dtype": dtype}
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0, **kw)
        self.depthwise_weight = nn.Parameter(torch.empty(mid, 1, *self.kernel_size, **kw))
        self.pointwise_weight = nn.Parameter(torch.empty(out_channels, mid, 1, 1, **kw))
        self.depthwise_gain = 1.0 / math.sqrt(math.prod(self.kernel_size))
        self.pointwise_gain = 1.0 / math.sqrt(mid)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``N(0, 1)`` weights (scaled at run time), affine bias 1."""
        with torch.no_grad():
            nn.init.normal_(self.depthwise_weight)
            nn.init.normal_(self.pointwise_weight)
        self.affine.reset_parameters()

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """``x`` ``(N, C, H, W)``, ``style`` ``(N, style_dim)`` -> ``(N, O, H', W')``."""
        if not check.is_fx_tracing():
            self._check(x, style)
        styles = self.affine(style)
        return modulated_separable_conv2d(
            x,
            self.depthwise_weight * self.depthwise_gain,
            self.pointwise_weight * self.pointwise_gain,
            styles,
            demodulate=self.demodulate,
            padding=self.padding,
            upsample=self.upsample,
            eps=self.eps,
            fused_modconv=self.fused_modconv,
        )

    def _check(self, x: Tensor, style: Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(style, torch.Tensor):
            raise TypeError(
                f"x and style must be tensors, got {type(x).__name__} and {type(style).__name__}"
            )
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        if tuple(style.shape) != (x.shape[0], self.style_dim):
            raise ValueError(
                f"style must have shape (N, style_dim) = ({x.shape[0]}, {self.style_dim}) for an input "
                f"of batch {x.shape[0]}, got shape {tuple(style.shape)}"
            )

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"style_dim={self.style_dim}, demodulate={self.demodulate}"
        )
        if self.depth_multiplier != 1:
            s += f", depth_multiplier={self.depth_multiplier}"
        if self.upsample:
            s += ", upsample=True"
        elif self.padding != "same":
            s += f", padding={self.padding!r}"
        return s
