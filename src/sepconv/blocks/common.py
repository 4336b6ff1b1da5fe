"""Building blocks shared by the MobileNets: ``ConvNormAct``, ``SqueezeExcite``, ``make_divisible``."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from sepconv import _validation as check
from sepconv.functional.padding import PaddingSpec
from sepconv.layers.conv import PaddedConv2d
from sepconv.layers.norm_act import LayerSpec, create_act, create_norm


def make_divisible(
    value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9
) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value``
    (default ``divisor``) nor below ``round_limit * value`` (torchvision's ``_make_divisible``).

    Example: ``make_divisible(32 * 0.75) == 24``, ``make_divisible(1280 * 0.35) == 448``.
    """
    check.positive_int(divisor, "divisor")
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


class ConvNormAct(nn.Sequential):
    """Conv2d, then a norm layer, then an activation (torchvision's ``Conv2dNormActivation``).

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: as ``nn.Conv2d``.
        padding: ``None`` (default) gives ``(kernel_size - 1) // 2 * dilation`` ("same" for
            stride 1); an int/tuple as ``nn.Conv2d``; ``"same"``/``"valid"`` use
            :class:`sepconv.PaddedConv2d` (TensorFlow padding, any stride).
        bias: ``None`` (default) means a bias only when there is no norm layer.
        norm_layer: class, string (``"batchnorm"``...), callable, instance or ``None``.
        act_layer: class, string (``"relu"``, ``"relu6"``...), callable, instance or ``None``.
        device, dtype: passed to every submodule.

    The layers are the children ``0`` (conv), ``1`` (norm, if any), ``2`` (act, if any), as
    in torchvision, so its state dicts load; ``.conv``, ``.norm`` and ``.act`` name them
    (``nn.Identity`` when absent). Shapes: ``(N, C_in, H, W) -> (N, C_out, H', W')``.
    """

    # (TorchScript compiles properties; these build modules it cannot type)
    __jit_unused_properties__: ClassVar[list[str]] = ["conv", "norm", "act"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: PaddingSpec | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        kernel = check.int_tuple(kernel_size, 2, "kernel_size")
        dil = check.int_tuple(dilation, 2, "dilation")
        if padding is None:
            padding = tuple((k - 1) // 2 * d for k, d in zip(kernel, dil))
        if bias is None:
            bias = norm_layer is None
        check.conv_channels(in_channels, out_channels, groups)
        # A plain nn.Conv2d where it can express the padding, so tools see the usual type.
        conv_cls = PaddedConv2d if isinstance(padding, str) else nn.Conv2d
        conv = conv_cls(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            dil,
            groups,
            bias,
            device=device,
            dtype=dtype,
        )
        layers: list[nn.Module] = [conv]
        norm = create_norm(norm_layer, out_channels, 2, device=device, dtype=dtype)
        if not isinstance(norm, nn.Identity):
            layers.append(norm)
        act = create_act(act_layer)
        if not isinstance(act, nn.Identity):
            layers.append(act)
        super().__init__(*layers)
        self.out_channels = out_channels
        self._has_norm = not isinstance(norm, nn.Identity)
        self._has_act = not isinstance(act, nn.Identity)

    def forward(self, x: Tensor) -> Tensor:
        """``act(norm(conv(x)))``: ``(N, C_in, H, W) -> (N, C_out, H', W')``. At inference a 1x1
        conv or a stem's, with its norm and activation, runs as one call where that is exact
        (:func:`sepconv.blocks.fused.conv_norm_act`); TorchScript sees the modules."""
        if not torch.jit.is_scripting():
            out = self._one_call(x)
            if out is not None:
                return out
        for module in self:
            x = module(x)
        return x

    @torch.jit.unused
    def _one_call(self, x: Tensor) -> Tensor | None:
        from sepconv.blocks import fused  # (which imports this module)

        return fused.conv_norm_act(self, x)

    @property
    def conv(self) -> nn.Conv2d:
        """The convolution (child ``0``)."""
        return self[0]  # type: ignore[return-value]

    @property
    def norm(self) -> nn.Module:
        """The norm layer, or ``nn.Identity()`` when there is none."""
        return self[1] if self._has_norm else nn.Identity()

    @property
    def act(self) -> nn.Module:
        """The activation, or ``nn.Identity()`` when there is none."""
        return self[len(self) - 1] if self._has_act else nn.Identity()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): ``x * gate(expand(act(reduce(mean_hw(x)))))``.

    Args:
        channels: ``C``, channels in and out.
        rd_ratio: squeeze channels as a share of ``C`` (default 0.25, as MobileNetV3).
        rd_channels: squeeze channels directly (overrides ``rd_ratio``).
        rd_divisor: ``rd_channels`` from ``rd_ratio`` is rounded with :func:`make_divisible`
            to this (8 as torchvision's MobileNetV3; 1 for no rounding).
        act_layer: activation between the two 1x1 convs (default ReLU).
        gate_layer: the gate (default sigmoid; ``"hardsigmoid"`` for MobileNetV3).
        device, dtype: passed to every submodule.

    Submodules ``conv_reduce``, ``act``, ``conv_expand``, ``gate`` (as timm).
    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 0.25,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check.positive_int(channels, "channels")
        if rd_channels is None:
            if not rd_ratio > 0:
                raise ValueError(f"rd_ratio must be > 0, got {rd_ratio!r}")
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
        check.positive_int(rd_channels, "rd_channels")
        self.conv_reduce = nn.Conv2d(
            channels, rd_channels, 1, bias=True, device=device, dtype=dtype
        )
        self.act = create_act(act_layer)
        self.conv_expand = nn.Conv2d(
            rd_channels, channels, 1, bias=True, device=device, dtype=dtype
        )
        self.gate = create_act(gate_layer, name="gate_layer")

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``: channels rescaled by a gate in (0, 1)."""
        scale = x.mean((2, 3), keepdim=True)
        scale = self.conv_expand(self.act(self.conv_reduce(scale)))
        return x * self.gate(scale)
