"""MobileNet blocks: ``DepthwiseSeparableBlock`` (V1) and ``InvertedResidual`` (V2)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from sepconv import _validation as check
from sepconv.blocks.common import ConvNormAct, SqueezeExcite
from sepconv.blocks.fused import (
    add_residual,
    conv_norm_act_stages,
    fused_depthwise_pointwise,
    norm_act_inplace,
    run_sequential,
)
from sepconv.kernels import programs
from sepconv.layers import plans
from sepconv.layers.fusion import UNFUSED, eager_mode, inference_mid_stage, plain_module
from sepconv.layers.norm_act import LayerSpec, create_norm


class DepthwiseSeparableBlock(nn.Module):
    """MobileNetV1 block: depthwise 3x3 conv-norm-act, then pointwise 1x1 conv-norm-act.

    Args:
        in_channels: ``C``. out_channels: ``O``.
        kernel_size, stride, dilation: of the depthwise conv (padding keeps "same" size at stride 1).
        depth_multiplier: ``M``, depthwise filters per input channel (default 1).
        norm_layer, act_layer: class, string, callable, instance or ``None``
            (default ``"batchnorm"``, ``"relu"``).
        pw_act: activation after the pointwise conv too (default True, as MobileNetV1).
        se_ratio: > 0 adds :class:`SqueezeExcite` between the stages, squeezing ``C*M``
            channels by this ratio.
        residual: add the input to the output where shapes allow (stride 1 and ``C == O``).
            Off by default: MobileNetV1 has no shortcuts.
        device, dtype: passed to every submodule.

    Submodules ``conv_dw`` and ``conv_pw`` (:class:`ConvNormAct`), ``se``.
    ``has_residual`` says whether the shortcut is used.
    Shapes: ``(N, C, H, W) -> (N, O, ceil(H/stride), ceil(W/stride))`` for odd kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        depth_multiplier: int = 1,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu",
        pw_act: bool = True,
        se_ratio: float = 0.0,
        residual: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check.positive_int(in_channels, "in_channels")
        check.positive_int(out_channels, "out_channels")
        check.positive_int(stride, "stride")
        mid = in_channels * check.positive_int(depth_multiplier, "depth_multiplier")
        factory = dict(device=device, dtype=dtype)
        self.conv_dw = ConvNormAct(
            in_channels,
            mid,
            kernel_size,
            stride,
            dilation=dilation,
            groups=in_channels,
            norm_layer=norm_layer,
            act_layer=act_layer,
            **factory,
        )
        self.se = (
            SqueezeExcite(mid, rd_ratio=se_ratio, **factory) if se_ratio > 0 else nn.Identity()
        )
        self.conv_pw = ConvNormAct(
            mid,
            out_channels,
            1,
            norm_layer=norm_layer,
            act_layer=act_layer if pw_act else None,
            **factory,
        )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.has_residual = bool(residual) and stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, O, H', W')``.

        At inference the depthwise conv-norm-act and the pointwise conv run as one fused call
        (:mod:`sepconv.blocks.fused`) where that is exact; the pointwise norm and activation
        follow.
        """
        out = self._fused_stages(x)
        if out is None:
            out = self.conv_pw(self.se(self.conv_dw(x)))
        return x + out if self.has_residual else out

    def plan_step(self, x: Tensor, mode: str) -> tuple[plans.Step, plans.Plan] | None:
        """What :meth:`forward` computes from the block's plan for ``x``, as a function of
        ``x``, and that plan; None without one (:mod:`sepconv.layers.plans`: a sequence
        that runs this block takes it in). Not for subclasses, whose forward may differ."""
        plan = plans.lookup(self, x, mode) if type(self) is DepthwiseSeparableBlock else None
        if plan is None:
            return None
        return functools.partial(_replayed, plan, self.has_residual, False), plan

    def _fused_stages(self, x: Tensor) -> Tensor | None:
        """``conv_pw(conv_dw(x))`` with the depthwise stage and ``conv_pw``'s conv fused, or
        None. Without autograd, later calls replay the first one's kernel call where nothing
        it depends on changed (:mod:`sepconv.layers.plans`)."""
        if eager_mode() is None:
            return None
        stages = [self.conv_dw, self.se, self.conv_pw]
        skipped = [*stages, *self.conv_dw.children(), *self.conv_pw.children()]
        return plans.planned(self, x, self._fuse, skipped)

    def _fuse(self, x: Tensor) -> tuple[Tensor | None, bool]:
        """The fused result or None, and whether it was one call (the pointwise norm and
        activation inside it, no stage after it)."""
        pw = self.conv_pw
        if not (plain_module(self.se, nn.Identity) and plain_module(pw, ConvNormAct)):
            return None, False
        stages = conv_norm_act_stages(pw)
        if stages is None:
            return None, False
        conv, norm, act = stages
        post = inference_mid_stage(norm, act, 2, conv)  # (in the call where it can be)
        if post is not UNFUSED:
            out = fused_depthwise_pointwise(self.conv_dw, conv, x, post)
            return out, out is not None
        out = fused_depthwise_pointwise(self.conv_dw, conv, x)
        if out is None:
            return None, False
        done = norm_act_inplace(out, norm, act)
        return (done if done is not None else act(norm(out))), False


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 conv-norm-act, depthwise conv-norm-act, linear 1x1 conv-norm.

    Args:
        in_channels: ``C``. out_channels: ``O``.
        stride: of the depthwise conv, any positive int (MobileNetV2 uses 1 and 2).
        expand_ratio: ``t``; hidden channels ``round(C * t)``. With ``t == 1`` there is no
            expansion conv (the first MobileNetV2 block).
        kernel_size, dilation: of the depthwise conv.
        norm_layer, act_layer: class, string, callable, instance or ``None``
            (default ``"batchnorm"``, ``"relu6"``). The last (projection) conv has no activation:
            the linear bottleneck.
        se_ratio: > 0 adds :class:`SqueezeExcite` on the hidden channels after the depthwise conv.
        residual: allow the shortcut (default True). It is used only when ``stride == 1`` and
            ``C == O`` (``use_res_connect``, as torchvision).
        device, dtype: passed to every submodule.

    Layout as torchvision (its state dicts load): ``conv = Sequential(expand ConvNormAct
    (if t != 1), depthwise ConvNormAct, [SqueezeExcite,] Conv2d 1x1, norm)``.
    Shapes: ``(N, C, H, W) -> (N, O, ceil(H/stride), ceil(W/stride))`` for odd kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 6,
        kernel_size: int = 3,
        dilation: int = 1,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu6",
        se_ratio: float = 0.0,
        residual: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check.positive_int(in_channels, "in_channels")
        check.positive_int(out_channels, "out_channels")
        check.positive_int(stride, "stride")
        if not expand_ratio > 0:
            raise ValueError(f"expand_ratio must be > 0, got {expand_ratio!r}")
        hidden = round(in_channels * expand_ratio)
        factory = dict(device=device, dtype=dtype)
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(
                ConvNormAct(
                    in_channels, hidden, 1, norm_layer=norm_layer, act_layer=act_layer, **factory
                )
            )
        layers.append(
            ConvNormAct(
                hidden,
                hidden,
                kernel_size,
                stride,
                dilation=dilation,
                groups=hidden,
                norm_layer=norm_layer,
                act_layer=act_layer,
                **factory,
            )
        )
        if se_ratio > 0:
            layers.append(SqueezeExcite(hidden, rd_ratio=se_ratio, **factory))
        layers.append(nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=norm_layer is None, **factory))
        norm = create_norm(norm_layer, out_channels, 2, **factory)
        if not isinstance(norm, nn.Identity):
            layers.append(norm)
        self.conv = nn.Sequential(*layers)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.hidden_channels = hidden
        self.use_res_connect = bool(residual) and stride == 1 and in_channels == out_channels

    @property
    def has_residual(self) -> bool:
        """Whether the shortcut is used (same as ``use_res_connect``)."""
        return self.use_res_connect

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, O, H', W')``; ``x + conv(x)`` when ``use_res_connect``.

        At inference the depthwise conv-norm-act and the projection run as one fused call
        (:mod:`sepconv.blocks.fused`) where that is exact.
        """
        return run_sequential(self.conv, x, x if self.use_res_connect else None)

    def plan_step(self, x: Tensor, mode: str) -> tuple[plans.Step, plans.Plan] | None:
        """As :meth:`DepthwiseSeparableBlock.plan_step`: the plan of ``self.conv``, the
        shortcut added into its output where that is fresh."""
        plan = plans.lookup(self.conv, x, mode) if type(self) is InvertedResidual else None
        if plan is None:
            return None
        return functools.partial(_replayed, plan, self.use_res_connect, plan.fresh), plan


def _replayed(plan: plans.Plan, residual: bool, fresh: bool, x: Tensor) -> Tensor:
    """``plan``'s output for ``x``, plus ``x`` where ``residual``, as the blocks' forwards
    add it (into the output where ``fresh``, :func:`~sepconv.blocks.fused.add_residual`)."""
    return add_residual(x if residual else None, plan.run(x), fresh)


@programs.lowers(_replayed)
def _lower_replayed(
    step: functools.partial, builder: programs.Builder, x: programs.Value
) -> programs.Value | None:
    """A block's plan taken into a sequence's (:mod:`sepconv.kernels.programs`): its steps,
    then the shortcut added into their output (in place whether or not the plan's output is
    fresh: a program's values are its own)."""
    plan, residual, _fresh = step.args
    out = builder.lower(plan.steps, x)
    return builder.add(out, x) if out is not None and residual else out
