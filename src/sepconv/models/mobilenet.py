"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018).

At width 1.0 with 1000 classes they have exactly the published parameter counts:
4,231,976 (MobileNetV1, as the TF-slim reference and Keras) and 3,504,872 (MobileNetV2,
as torchvision). Weights start as in the reference implementations:

- MobileNetV1 as TF-slim's ``mobilenet_v1_arg_scope``: every conv and the classifier draw
  from a normal with std 0.09 truncated at two std, biases 0; BN weight 1, bias 0.
  Activation ReLU6 and dropout 0.001 (``dropout_keep_prob=0.999``), also as TF-slim.
- MobileNetV2 as torchvision: convs ``kaiming_normal_(mode="fan_out")``, linear
  ``normal(0, 0.01)``, biases 0, BN/GroupNorm weight 1, bias 0; dropout 0.2.

Nothing is downloaded: pass ``weights=`` a state-dict file (loaded with ``weights_only=True``)
to start from trained weights. ``mobilenet_v2`` has torchvision's module layout, so a
torchvision MobileNetV2 state dict loads as it is.

``mobilenet_v1_small`` / ``mobilenet_v2_small`` are the variants for 32x32 (CIFAR) and 8x8
(digits) inputs: a stride-1 stem and fewer stride-2 stages, so the last feature map is 2x2
(V1) or 4x4 / 2x2 (V2) instead of collapsing to nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sepconv.blocks.common import ConvNormAct, make_divisible
from sepconv.blocks.fused import run_sequential
from sepconv.blocks.mobilenet import DepthwiseSeparableBlock, InvertedResidual
from sepconv.layers.norm_act import LayerSpec

# MobileNetV1 body after the stem: (output channels, stride) of each depthwise-separable block.
V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# MobileNetV2 stages: expansion t, output channels c, repeats n, stride s (of the first block).
V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Stem stride and per-block (V1) / per-stage (V2) strides of the small-input variants.
_SMALL_V1_STRIDES = {
    32: (1, (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)),  # 32 -> 2
    8: (1, (1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1)),  # 8 -> 2
}
_SMALL_V2_STRIDES = {
    32: (1, (1, 1, 2, 2, 1, 2, 1)),  # 32 -> 4, as the common CIFAR MobileNetV2
    8: (1, (1, 1, 1, 2, 1, 2, 1)),  # 8 -> 2
}


class _MobileNet(nn.Module):
    """What both MobileNets share: a stem, ``features``, global average pooling, ``classifier``."""

    def _stem(
        self, in_chans: int, channels: int, stride: int, norm_layer, act_layer, factory
    ) -> nn.Module:
        return ConvNormAct(
            in_chans, channels, 3, stride, norm_layer=norm_layer, act_layer=act_layer, **factory
        )

    def _finish(
        self, layers: list[nn.Module], channels: int, num_classes: int, dropout: float, factory
    ) -> None:
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.classifier = _classifier(channels, num_classes, dropout, **factory)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W) -> (N, num_features, H/32, W/32)`` (unpooled). At inference
        1x1 conv-norm-act layers run as one GEMM each (:mod:`sepconv.blocks.fused`)."""
        return run_sequential(self.features, x)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W) -> (N, num_classes)``. At inference a batch of one image goes
        through the classifier's ``nn.Linear`` as one kernel call (:mod:`sepconv.blocks.fused`)."""
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1), 1)
        if type(self.classifier) is nn.Sequential:  # (not one a user put in its place)
            return run_sequential(self.classifier, pooled)
        return self.classifier(pooled)


class MobileNetV1(_MobileNet):
    """MobileNetV1: a 3x3 stem conv, 13 :class:`DepthwiseSeparableBlock`, global pooling, a classifier.

    Args:
        num_classes: classifier outputs (0 for none: ``forward`` returns pooled features).
        width_mult: the width multiplier alpha; channels ``max(int(c * alpha), min_depth)``
            (TF-slim's ``depth_multiplier``).
        in_chans: input channels.
        stem_stride: stride of the stem conv (2; 1 for small inputs).
        strides: the 13 block strides (default ``V1_BLOCKS``'s).
        min_depth: least channels of any layer (8).
        dropout: before the classifier (0.001, TF-slim's ``dropout_keep_prob=0.999``).
        norm_layer, act_layer: class, string, callable, instance or ``None``.
        device, dtype: passed to every submodule.

    Modules: ``features`` (``Sequential``: stem :class:`ConvNormAct`, then the blocks),
    ``classifier`` (``Sequential(Dropout, Linear)``). ``num_features``: channels before it.
    Shapes: ``(N, in_chans, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        in_chans: int = 3,
        *,
        stem_stride: int = 2,
        strides: Sequence[int] | None = None,
        min_depth: int = 8,
        dropout: float = 0.001,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu6",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_width(width_mult)
        strides = _check_strides(strides, [s for _, s in V1_BLOCKS], "strides")
        factory = dict(device=device, dtype=dtype)

        def depth(channels: int) -> int:
            return max(int(channels * width_mult), min_depth)

        channels = depth(32)
        layers = [self._stem(in_chans, channels, stem_stride, norm_layer, act_layer, factory)]
        for (out, _), stride in zip(V1_BLOCKS, strides):
            layers.append(
                DepthwiseSeparableBlock(
                    channels,
                    depth(out),
                    3,
                    stride,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    **factory,
                )
            )
            channels = depth(out)
        self._finish(layers, channels, num_classes, dropout, factory)
        init_tf_slim_(self)


class MobileNetV2(_MobileNet):
    """MobileNetV2, with torchvision's layout: ``features`` then ``classifier``.

    Args:
        num_classes: classifier outputs (0 for none: ``forward`` returns pooled features).
        width_mult: channels ``make_divisible(c * width_mult, round_nearest)``; the last conv
            has ``make_divisible(1280 * max(1, width_mult))`` channels.
        in_chans: input channels.
        stem_stride: stride of the stem conv (2; 1 for small inputs).
        strides: the 7 stage strides (default ``V2_STAGES``'s).
        round_nearest: channel rounding (8; 1 turns it off).
        dropout: before the classifier (0.2, as torchvision).
        norm_layer, act_layer: class, string, callable, instance or ``None``.
        device, dtype: passed to every submodule.

    Shapes: ``(N, in_chans, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        in_chans: int = 3,
        *,
        stem_stride: int = 2,
        strides: Sequence[int] | None = None,
        round_nearest: int = 8,
        dropout: float = 0.2,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu6",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_width(width_mult)
        strides = _check_strides(strides, [s for *_, s in V2_STAGES], "strides")
        factory = dict(device=device, dtype=dtype)
        channels = make_divisible(32 * width_mult, round_nearest)
        last = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers = [self._stem(in_chans, channels, stem_stride, norm_layer, act_layer, factory)]
        for (t, c, n, _), stride in zip(V2_STAGES, strides):
            out = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                layers.append(
                    InvertedResidual(
                        channels,
                        out,
                        stride if i == 0 else 1,
                        expand_ratio=t,
                        norm_layer=norm_layer,
                        act_layer=act_layer,
                        **factory,
                    )
                )
                channels = out
        layers.append(
            ConvNormAct(channels, last, 1, norm_layer=norm_layer, act_layer=act_layer, **factory)
        )
        self._finish(layers, last, num_classes, dropout, factory)
        self.last_channel = last  # torchvision's name
        init_torchvision_(self)


def mobilenet_v1(
    width_mult: float = 1.0,
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> MobileNetV1:
    """MobileNetV1 for 224x224 inputs; 4,231,976 parameters at width 1.0, 1000 classes.

    ``weights``: a state-dict file to load (``weights_only=True``); ``kwargs`` go to :class:`MobileNetV1`.
    """
    return _load(MobileNetV1(num_classes, width_mult, in_chans, **kwargs), weights)


def mobilenet_v2(
    width_mult: float = 1.0,
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> MobileNetV2:
    """MobileNetV2 for 224x224 inputs; 3,504,872 parameters at width 1.0, 1000 classes (as torchvision).

    ``weights``: a state-dict file to load (``weights_only=True``; torchvision's loads as it is);
    ``kwargs`` go to :class:`MobileNetV2`.
    """
    return _load(MobileNetV2(num_classes, width_mult, in_chans, **kwargs), weights)


def mobilenet_v1_small(
    input_size: int = 32,
    width_mult: float = 1.0,
    num_classes: int = 10,
    in_chans: int = 3,
    *,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> MobileNetV1:
    """MobileNetV1 for ``input_size`` 32 (CIFAR: stride-1 stem, 32 -> 2) or 8 (digits: 8 -> 2).

    Same layers and parameters as :func:`mobilenet_v1`, fewer stride-2 steps.
    """
    stem, strides = _small(_SMALL_V1_STRIDES, input_size)
    kwargs = {"stem_stride": stem, "strides": strides, **kwargs}
    return _load(MobileNetV1(num_classes, width_mult, in_chans, **kwargs), weights)


def mobilenet_v2_small(
    input_size: int = 32,
    width_mult: float = 1.0,
    num_classes: int = 10,
    in_chans: int = 3,
    *,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> MobileNetV2:
    """MobileNetV2 for ``input_size`` 32 (CIFAR: stride-1 stem and second stage, 32 -> 4) or 8 (8 -> 2).

    Same layers and parameters as :func:`mobilenet_v2`, fewer stride-2 steps.
    """
    stem, strides = _small(_SMALL_V2_STRIDES, input_size)
    kwargs = {"stem_stride": stem, "strides": strides, **kwargs}
    return _load(MobileNetV2(num_classes, width_mult, in_chans, **kwargs), weights)


@torch.no_grad()
def init_tf_slim_(model: nn.Module, std: float = 0.09) -> nn.Module:
    """TF-slim MobileNetV1 init, in place: conv and linear weights ~ N(0, std) truncated at
    +-2 std, biases 0, norm weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.trunc_normal_(module.weight, 0.0, std, -2 * std, 2 * std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        else:
            _init_norm(module)
    return model


@torch.no_grad()
def init_torchvision_(model: nn.Module) -> nn.Module:
    """torchvision MobileNetV2 init, in place: conv ``kaiming_normal_(mode="fan_out")``,
    linear ``normal(0, 0.01)``, biases 0, norm weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
        else:
            _init_norm(module)
    return model


def _init_norm(module: nn.Module) -> None:
    if isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
        if getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def _classifier(
    features: int, num_classes: int, dropout: float, device=None, dtype=None
) -> nn.Module:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if num_classes == 0:
        return nn.Identity()
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(features, num_classes, device=device, dtype=dtype)
    )


def _check_width(width_mult: float) -> None:
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, int | float)
        or not (width_mult > 0 and math.isfinite(width_mult))
    ):
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")


def _check_strides(strides: Sequence[int] | None, default: list[int], name: str) -> list[int]:
    if strides is None:
        return default
    strides = list(strides)
    if len(strides) != len(default) or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in strides
    ):
        raise ValueError(f"{name} must be {len(default)} positive ints, got {strides!r}")
    return strides


def _small(
    table: dict[int, tuple[int, tuple[int, ...]]], input_size: int
) -> tuple[int, tuple[int, ...]]:
    if input_size not in table:
        raise ValueError(f"input_size must be one of {sorted(table)}, got {input_size!r}")
    return table[input_size]


def _load(model: nn.Module, weights: str | os.PathLike | None) -> nn.Module:
    if weights is None:
        return model
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(
            f"{weights} is not a state-dict file torch.load can read: {error}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{weights} does not hold a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{weights} does not fit {type(model).__name__}: {str(error).splitlines()[0]}"
        ) from None
    return model
