"""Depthwise-separable layers: a depthwise stage, then a pointwise stage.

``SeparableConv1d/2d/3d`` (Xception style by default: nothing between the stages;
MobileNet style with ``mid_norm_layer``/``mid_act_layer``) and
``SeparableConvTranspose1d/2d/3d`` (a depthwise *transposed* stage, for decoders).
Norm and activation after the pointwise stage come from ``norm_layer``/``act_layer``.

Shapes (2d): ``(N, C, H, W) -> depthwise (N, C*M, H', W') -> pointwise (N, O, H', W')``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sepconv import _validation as check
from sepconv.functional.conv import MidStage, separable_forward
from sepconv.functional.padding import PaddingSpec
from sepconv.functional.weights import separable_to_dense
from sepconv.kernels import dispatch
from sepconv.layers import conv as convs
from sepconv.layers import plans, transpose
from sepconv.layers.fusion import (
    UNFUSED,
    any_global_hooks,
    has_plain_weights,
    hooked,
    inference_mid_stage,
    plain_module,
)
from sepconv.layers.norm_act import LayerSpec, create_act, create_norm


class _SeparableBase(nn.Module):
    """Holds the stages ``depthwise, mid_norm, mid_act, pointwise, norm, act`` and runs them."""

    _rank: int
    _pointwise_cls: type[nn.Module]

    def _build_stages(
        self,
        depthwise: nn.Module,
        out_channels: int,
        bias: bool,
        norm_layer: LayerSpec,
        act_layer: LayerSpec,
        mid_norm_layer: LayerSpec,
        mid_act_layer: LayerSpec,
        pointwise_groups: int,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        mid = depthwise.out_channels
        self.depthwise = depthwise
        self.mid_norm = create_norm(
            mid_norm_layer, mid, self._rank, device=device, dtype=dtype, name="mid_norm_layer"
        )
        self.mid_act = create_act(mid_act_layer, name="mid_act_layer")
        check.positive_int(pointwise_groups, "pointwise_groups")
        check.divisible(
            mid, pointwise_groups, f"depthwise channels {mid} must be divisible by pointwise_groups"
        )
        check.divisible(
            out_channels,
            pointwise_groups,
            f"out_channels {out_channels} must be divisible by pointwise_groups",
        )
        self.pointwise = self._pointwise_cls(
            mid,
            out_channels,
            bias=bias and norm_layer is None,
            groups=pointwise_groups,
            device=device,
            dtype=dtype,
        )
        self.norm = create_norm(norm_layer, out_channels, self._rank, device=device, dtype=dtype)
        self.act = create_act(act_layer)

    # Attributes users look for on a conv layer, read from the stages.
    in_channels = property(lambda self: self.depthwise.in_channels)
    out_channels = property(lambda self: self.pointwise.out_channels)
    kernel_size = property(lambda self: self.depthwise.kernel_size)
    stride = property(lambda self: self.depthwise.stride)
    padding = property(lambda self: self.depthwise.padding)
    dilation = property(lambda self: self.depthwise.dilation)
    depth_multiplier = property(lambda self: self.depthwise.depth_multiplier)

    @property
    def has_mid_layers(self) -> bool:
        """True when a norm or activation sits between the depthwise and pointwise stages."""
        return _has_mid_layers(self._modules)

    # The forward reads its stages from ``self._modules``: ``nn.Module.__getattr__`` costs
    # about 1.4 us a lookup on the benchmark machine, a tenth of a small layer's kernel.
    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *spatial) -> (N, O, *spatial_out)``; unbatched ``(C, *spatial)`` too."""
        batched = self._modules["depthwise"]._batched(x)
        out = self._all_stages(batched)
        return out if batched is x else out.squeeze(0)

    def _all_stages(self, x: Tensor) -> Tensor:
        """The convolutions, then ``norm`` and ``act``; ``x`` batched."""
        stages = self._modules
        return _run_stage(stages["act"], _run_stage(stages["norm"], self._conv_stages(x)))

    def _conv_stages(self, x: Tensor) -> Tensor:
        return self.pointwise(self.mid_act(self.mid_norm(self.depthwise(x))))

    def reset_parameters(self) -> None:
        """Re-initialise every stage with its own fan-in, and any norm layers."""
        for module in (self.depthwise, self.mid_norm, self.pointwise, self.norm):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _dense_or_sequential(self, dense: nn.Module) -> nn.Module:
        if isinstance(self.norm, nn.Identity) and isinstance(self.act, nn.Identity):
            return dense
        import copy

        return nn.Sequential(dense, copy.deepcopy(self.norm), copy.deepcopy(self.act))

    def _check_dense_possible(self) -> None:
        if self.has_mid_layers:
            raise ValueError(
                f"{type(self).__name__}.to_dense() is exact only with nothing between the stages, but this "
                f"layer has mid_norm={self.mid_norm!r}, mid_act={self.mid_act!r}"
            )


class _SeparableConvNd(_SeparableBase):
    """Depthwise-separable convolution: depthwise ``k``-conv then pointwise 1x1 conv.

    Args:
        in_channels: ``C``. out_channels: ``O``.
        kernel_size, stride, padding, dilation, padding_mode: of the depthwise stage
            (``padding`` also ``"valid"``, ``"same"``, and ``"causal"`` in 1d).
        depth_multiplier: ``M``; the depthwise stage has ``C*M`` outputs, ``c*M + m``
            being filter ``m`` of input channel ``c``.
        bias: a bias on each conv stage that no norm follows (as two ``nn.ConvNd`` would),
            so ``SeparableConv2d(10, 32, 3)`` has ``10*9+10 + 10*32+32 = 452`` parameters.
        norm_layer, act_layer: after the pointwise stage (class, string, callable or None).
        mid_norm_layer, mid_act_layer: between the stages (MobileNet style).
        pointwise_groups: groups of the pointwise stage (default 1).

    Submodules: ``depthwise`` (:class:`DepthwiseConvNd`), ``mid_norm``, ``mid_act``,
    ``pointwise`` (:class:`PointwiseConvNd`), ``norm``, ``act``.
    Shapes: ``(N, C, *spatial) -> (N, O, *spatial_out)``.
    """

    _depthwise_cls: type[nn.Module]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: PaddingSpec = 0,
        dilation: int | tuple[int, ...] = 1,
        depth_multiplier: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        norm_layer: LayerSpec = None,
        act_layer: LayerSpec = None,
        mid_norm_layer: LayerSpec = None,
        mid_act_layer: LayerSpec = None,
        pointwise_groups: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {bias!r}")
        check.positive_int(out_channels, "out_channels")
        depthwise = self._depthwise_cls(
            in_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            depth_multiplier,
            bias=bias and mid_norm_layer is None,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._build_stages(
            depthwise,
            out_channels,
            bias,
            norm_layer,
            act_layer,
            mid_norm_layer,
            mid_act_layer,
            pointwise_groups,
            device,
            dtype,
        )

    padding_mode = property(lambda self: self.depthwise.padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *spatial) -> (N, O, *spatial_out)``; unbatched ``(C, *spatial)`` too."""
        # A replayed plan first, before the input checks (plans.replayed): they took 1.3 us
        # of a batch-1 call's 13 us of Python (docs/performance.md, run AE).
        if type(self) in _PLANNED:
            out = plans.replayed(self, x)
            if out is not None:
                return out
        return super().forward(x)

    def _all_stages(self, x: Tensor) -> Tensor:
        # Without autograd, a call replays the kernel call of the first one while nothing it
        # depends on has changed (sepconv.layers.plans): asking afresh which stages a fused
        # call may skip took 10 us of a MobileNet-style 1x192x28x28 -> 64 layer's 76 us
        # (docs/performance.md, run Z). Not for subclasses, whose stages may differ.
        if type(self) in _PLANNED:
            out = plans.planned(self, x, self._one_call, self._modules.values())
        else:
            out = self._one_call(x)[0]
        return out if out is not None else super()._all_stages(x)

    def _one_call(self, x: Tensor) -> tuple[Tensor | None, bool]:
        """All stages as one fused call and True, or (None, False) where they cannot be."""
        stages = self._one_call_stages(x)
        return (None, False) if stages is None else (self._fused_call(x, *stages), True)

    def _one_call_stages(self, x: Tensor) -> tuple[MidStage | None, MidStage | None] | None:
        """``(mid, post)`` where all stages run as one fused call (:meth:`_fused_call`),
        else None. ``norm`` and ``act`` go into the call where they are an inference batch
        norm and a clamp: as modules, each was a pass over the output and a fresh tensor."""
        mid = self._fused_mid()
        if mid is UNFUSED:
            return None
        post = self._fused_post()
        if post is None and not _bare_ends(self._modules):
            return None
        if (mid is not None or post is not None) and not dispatch.eager_inference(x):
            # (a stage between or after the convolutions is fused only at eager inference:
            # with an input gradient, autocast, functorch or forward AD, the modules run)
            return None
        return mid, post

    def _conv_stages(self, x: Tensor) -> Tensor:
        mid = self._fused_mid()
        if mid is UNFUSED or (mid is not None and not dispatch.eager_inference(x)):
            # (a stage between the convolutions is fused only at eager inference: with an
            # input gradient, autocast, functorch or forward AD, the modules run)
            return super()._conv_stages(x)
        return self._fused_call(x, mid)

    def _fused_call(self, x: Tensor, mid: MidStage | None, post: MidStage | None = None) -> Tensor:
        """The stages as one :func:`separable_forward` call, with ``mid`` between the
        convolutions and ``post`` after them."""
        stages = self._modules
        dw, pw = stages["depthwise"], stages["pointwise"]
        dw_params, pw_params = dw._parameters, pw._parameters  # plain: _can_fuse_stages
        return separable_forward(
            x,
            dw_params["weight"],
            pw_params["weight"],
            dw_params["bias"],
            pw_params["bias"],
            dw.stride,
            dw.dilation,
            dw._plan,
            dw.padding_mode,
            mid,
            post,
        )

    def _fused_post(self) -> MidStage | None:
        """``norm`` then ``act`` as the stage after the convolutions of a fused call, or None
        where there are none or they must run as modules (:func:`inference_mid_stage`; also
        when tracing and under ``SEPCONV_KERNELS=off``)."""
        stages = self._modules
        if isinstance(stages["norm"], nn.Identity) and isinstance(stages["act"], nn.Identity):
            return None
        if dispatch.tracing() or dispatch.mode() == "off":
            return None
        post = inference_mid_stage(
            stages["norm"], stages["act"], self._rank, stages["depthwise"], stages["pointwise"]
        )
        return None if post is UNFUSED else post

    def _can_fuse_stages(self) -> bool:
        """Whether the stages run as one fused call, skipping their own ``forward``."""
        return self._fused_mid() is not UNFUSED

    def _fused_mid(self) -> MidStage | object | None:
        """What one fused call of the stages runs between the convolutions: None (nothing),
        a :class:`MidStage`, or ``UNFUSED`` where the stages must run one by one.

        Fused only when nothing observes or rewrites a stage: both convolutions are the
        layer's own classes with their own ``forward`` (not replaced by, say, a QAT conv), no
        module or global hooks (pruning and weight norm use pre-hooks) and no
        parametrization (then ``weight`` is no longer a plain parameter); and between them
        nothing, or what :func:`~sepconv.layers.fusion.mid_stage_of` takes (an inference batch
        norm, a clamp).
        """
        stages = self._modules
        if any_global_hooks():
            return UNFUSED
        if not (
            _is_plain_stage(stages["depthwise"], self._depthwise_cls)
            and _is_plain_stage(stages["pointwise"], self._pointwise_cls)
        ):
            return UNFUSED
        if not _has_mid_layers(stages):
            return None
        if dispatch.tracing() or dispatch.mode() == "off":
            # Traced or exported graphs show the modules whatever the grad mode; "off" is the
            # reference: the modules, each a profiler row of its own.
            return UNFUSED
        return inference_mid_stage(
            stages["mid_norm"],
            stages["mid_act"],
            self._rank,
            stages["depthwise"],
            stages["pointwise"],
        )

    def to_dense(self) -> nn.Module:
        """One equivalent dense conv (exact), when nothing sits between the stages.

        Returns an ``nn.ConvNd`` (a :class:`PaddedConvNd` when the padding is asymmetric or
        depends on the input size), followed by copies of ``norm``/``act`` in an
        ``nn.Sequential`` if the layer has them. Raises ValueError if it has mid layers.
        """
        self._check_dense_possible()
        dw, pw = self.depthwise, self.pointwise
        weight, bias, groups = separable_to_dense(
            dw.weight.detach(),
            pw.weight.detach(),
            None if dw.bias is None else dw.bias.detach(),
            None if pw.bias is None else pw.bias.detach(),
            in_channels=dw.in_channels,
        )
        dense = _dense_conv_like(dw, self.out_channels, groups, bias is not None, self._rank)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if bias is not None:
                dense.bias.copy_(bias)
        return self._dense_or_sequential(dense)


def _bare_ends(stages: dict[str, nn.Module]) -> bool:
    """No ``norm`` or ``act``: both an unhooked ``nn.Identity`` (and no global hooks, which
    :meth:`_SeparableConvNd._fused_mid` asked first)."""
    return _bare_identity(stages["norm"]) and _bare_identity(stages["act"])


def _bare_identity(stage: nn.Module) -> bool:
    """``stage`` is an unhooked ``nn.Identity`` (a call of it may be skipped where there
    are no global hooks either)."""
    return type(stage) is nn.Identity and not hooked(stage)


def _has_mid_layers(stages: dict[str, nn.Module]) -> bool:
    return not (
        isinstance(stages["mid_norm"], nn.Identity) and isinstance(stages["mid_act"], nn.Identity)
    )


def _is_plain_stage(stage: nn.Module, expected: type) -> bool:
    """The stage is the layer's own class with its own ``forward``, unhooked, unpruned, its
    weight and bias plain parameters (or a bias of None)."""
    # (another class, e.g. a QAT conv, or a patched forward: its forward must run)
    return plain_module(stage, expected) and has_plain_weights(stage)


def _run_stage(stage: nn.Module, x: Tensor) -> Tensor:
    """``stage(x)``, skipping the call of an unhooked ``nn.Identity`` (3.8 us a call)."""
    if _bare_identity(stage) and not any_global_hooks():
        return x
    return stage(x)


def _dense_conv_like(
    dw: nn.Module, out_channels: int, groups: int, bias: bool, rank: int
) -> nn.Module:
    """A dense conv with ``dw``'s geometry: plain ``nn.ConvNd`` when it can express the padding."""
    kwargs = dict(
        stride=dw.stride,
        dilation=dw.dilation,
        groups=groups,
        bias=bias,
        padding_mode=dw.padding_mode,
        device=dw.weight.device,
        dtype=dw.weight.dtype,
    )
    if dw._plan.symmetric is not None:
        plain = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
        return plain(
            dw.in_channels, out_channels, dw.kernel_size, padding=dw._plan.symmetric, **kwargs
        )
    padded = {1: convs.PaddedConv1d, 2: convs.PaddedConv2d, 3: convs.PaddedConv3d}[rank]
    return padded(dw.in_channels, out_channels, dw.kernel_size, padding=dw.padding_spec, **kwargs)


class SeparableConv1d(_SeparableConvNd):
    __doc__ = _SeparableConvNd.__doc__
    _rank, _depthwise_cls, _pointwise_cls = 1, convs.DepthwiseConv1d, convs.PointwiseConv1d


class SeparableConv2d(_SeparableConvNd):
    __doc__ = _SeparableConvNd.__doc__
    _rank, _depthwise_cls, _pointwise_cls = 2, convs.DepthwiseConv2d, convs.PointwiseConv2d


class SeparableConv3d(_SeparableConvNd):
    __doc__ = _SeparableConvNd.__doc__
    _rank, _depthwise_cls, _pointwise_cls = 3, convs.DepthwiseConv3d, convs.PointwiseConv3d


class _SeparableConvTransposeNd(_SeparableBase):
    """Depthwise *transposed* conv then pointwise conv, for decoders and up-sampling.

    Args as :class:`SeparableConv2d`, but the depthwise stage is a transposed conv with
    ``stride``, ``padding`` (int or tuple), ``output_padding`` and ``dilation`` as in
    ``nn.ConvTransposeNd``. Submodules ``depthwise`` (:class:`DepthwiseConvTransposeNd`,
    weight ``(C, M, *kernel)``) and ``pointwise``.
    Shapes: ``(N, C, *spatial) -> (N, O, *((spatial-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1))``.
    """

    _depthwise_cls: type[nn.Module]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        output_padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        depth_multiplier: int = 1,
        bias: bool = True,
        norm_layer: LayerSpec = None,
        act_layer: LayerSpec = None,
        mid_norm_layer: LayerSpec = None,
        mid_act_layer: LayerSpec = None,
        pointwise_groups: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {bias!r}")
        check.positive_int(out_channels, "out_channels")
        depthwise = self._depthwise_cls(
            in_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            dilation,
            depth_multiplier,
            bias=bias and mid_norm_layer is None,
            device=device,
            dtype=dtype,
        )
        self._build_stages(
            depthwise,
            out_channels,
            bias,
            norm_layer,
            act_layer,
            mid_norm_layer,
            mid_act_layer,
            pointwise_groups,
            device,
            dtype,
        )

    output_padding = property(lambda self: self.depthwise.output_padding)


_PLANNED = frozenset({SeparableConv1d, SeparableConv2d, SeparableConv3d})


class SeparableConvTranspose1d(_SeparableConvTransposeNd):
    __doc__ = _SeparableConvTransposeNd.__doc__
    _rank, _depthwise_cls, _pointwise_cls = (
        1,
        transpose.DepthwiseConvTranspose1d,
        convs.PointwiseConv1d,
    )


class SeparableConvTranspose2d(_SeparableConvTransposeNd):
    __doc__ = _SeparableConvTransposeNd.__doc__
    _rank, _depthwise_cls, _pointwise_cls = (
        2,
        transpose.DepthwiseConvTranspose2d,
        convs.PointwiseConv2d,
    )


class SeparableConvTranspose3d(_SeparableConvTransposeNd):
    __doc__ = _SeparableConvTransposeNd.__doc__
    _rank, _depthwise_cls, _pointwise_cls = (
        3,
        transpose.DepthwiseConvTranspose3d,
        convs.PointwiseConv3d,
    )
