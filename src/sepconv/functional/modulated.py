"""Modulated (style-conditioned) depthwise-separable convolution, as in StyleGAN2 generators.

Shapes: input ``x`` ``(N, C, H, W)``; depthwise weight ``D`` ``(C*M, 1, kH, kW)`` (output
channel ``c*M + m`` is filter ``m`` of input channel ``c``); pointwise weight ``P``
``(O, C*M, 1, 1)`` or flat ``(O, C*M)``; styles ``s`` ``(N, C)``, one scale per sample and
*input* channel (the output of the layer's affine map).

The separable layer is a dense conv whose weight is the composition of the two stages::

    W[o, c, k] = sum_m P[o, c*M + m] * D[c*M + m, k]

Modulation scales input channel ``c`` of sample ``n``: ``W'[n, o, c, k] = W[o, c, k] * s[n, c]``.
Demodulation (StyleGAN2) divides output channel ``o`` of sample ``n`` by the norm of *its*
combined, modulated weight, so that i.i.d. unit-variance inputs give unit-variance outputs::

    d[n, o] = rsqrt( sum_{c,k} W'[n, o, c, k]^2 + eps )
            = rsqrt( sum_c s[n, c]^2 * G[o, c] + eps ),   G[o, c] = sum_k W[o, c, k]^2

``G`` does not depend on the style, so it is computed once per call without forming the
``(N, O, C, kH*kW)`` modulated dense weight: for ``M = 1`` it is ``P[o, c]^2 * |D[c]|^2``,
for ``M > 1`` it squares the ``(O, C, kH*kW)`` combined weight ``W`` itself (the same as
``sum_{m,m'} P[o,c,m] P[o,c,m'] Gram_c[m, m']`` with the per-channel Gram matrix
``Gram_c[m, m'] = sum_k D[cM+m, k] D[cM+m', k]``, but that shortcut loses twice the digits
where the ``M`` products cancel).

Where the scales go: ``s[n, c]`` acts on input channel ``c``, which one depthwise filter group
reads alone, so it scales the depthwise weights; ``d[n, o]`` scales output channel ``o``,
i.e. row ``o`` of the pointwise weights. With ``fused_modconv=True`` both are
folded into per-sample weights and the batch runs as two grouped convolutions: the
depthwise stage with ``groups = N*C`` on the input reshaped to ``(1, N*C, H, W)``, the
pointwise stage with ``groups = N``. With ``fused_modconv=False`` the input is scaled by
``s`` and the output by ``d`` around the two plain, shared-weight convolutions instead.
Both give the same result up to rounding. The weight-side form touches ``N*C*M*k*k`` and
``N*O*C*M`` weights instead of ``N*C*H*W`` inputs and ``N*O*H*W`` outputs, so it is the
cheaper one for contiguous (NCHW) inputs; but folding the batch into the channels cannot
be done in place on a channels_last tensor (it costs two layout copies), and PyTorch's CPU
depthwise and 1x1 convolutions run about twice as fast on channels_last. The default
``fused_modconv=None`` therefore picks the weight-side form for contiguous inputs and the
activation-side form for channels_last inputs (see ``docs/modulated.md`` for timings).

Up-sampling (``upsample=True``): the depthwise stage is a transposed conv with stride 2, as
in StyleGAN2's up-sampling conv, with ``padding = (k - 1) // 2`` and
``output_padding = 2 + 2*padding - k`` per dim, so the output is exactly ``(2H, 2W)`` for any
kernel size (``k=3``: padding 1, output_padding 1; ``k=4``: padding 1, output_padding 0).
A stride-2 transposed conv sends each output pixel only one of 4 phases of the kernel taps,
so the output variance averaged over the 4 phases is ``sum W'^2 / 4``; the demodulation
therefore carries the gain ``2 = sqrt(2*2)`` when up-sampling
(``d = 2 * rsqrt(sum W'^2 + eps)``), keeping unit-variance inputs at unit variance per
channel. (StyleGAN2 gets the same factor from the ``up**2`` gain of its blur filter; there is
no blur here.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sepconv import _validation as check
from sepconv.functional.conv import conv_forward
from sepconv.functional.padding import PaddingSpec, resolve_padding

__all__ = ["demodulation_coefficients", "modulated_separable_conv2d", "upsample_geometry"]

_UP = 2  # up-sampling factor of the transposed depthwise stage


def upsample_geometry(kernel_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(padding, output_padding)`` of the stride-2 transposed stage giving output ``(2H, 2W)``.

    ``out = (H - 1)*2 - 2p + k + op = 2H`` with ``p = (k - 1) // 2`` and ``op = 2 + 2p - k``
    (0 for even ``k``, 1 for odd ``k``; always ``< 2`` as a transposed conv needs).
    """
    padding = tuple((k - 1) // 2 for k in kernel_size)
    output_padding = tuple(_UP + 2 * p - k for p, k in zip(padding, kernel_size))
    return padding, output_padding  # type: ignore[return-value]


def demodulation_coefficients(
    depthwise_weight: Tensor,
    pointwise_weight: Tensor,
    styles: Tensor,
    eps: float = 1e-8,
    gain: float = 1.0,
) -> Tensor:
    """``d[n, o] = gain * rsqrt(sum_{c,k} (s[n,c] * sum_m P[o,cM+m] D[cM+m,k])^2 + eps)``.

    Args:
        depthwise_weight: ``(C*M, 1, *kernel)``. pointwise_weight: ``(O, C*M, ...)``.
        styles: ``(N, C)``. eps: added under the square root. gain: multiplies the result.

    Returns ``(N, O)`` in float32 (float64 if an argument is float64), computed outside
    autocast so that bfloat16 training keeps an exact normaliser.
    """
    channels = styles.shape[1]
    mid = depthwise_weight.shape[0]
    mult = mid // channels
    dtype = torch.promote_types(
        torch.float32, torch.promote_types(depthwise_weight.dtype, styles.dtype)
    )
    dtype = torch.promote_types(dtype, pointwise_weight.dtype)
    with torch.autocast(device_type=styles.device.type, enabled=False):
        dw = depthwise_weight.to(dtype).reshape(channels, mult, -1)  # (C, M, K)
        pw = pointwise_weight.to(dtype).reshape(
            pointwise_weight.shape[0], channels, mult
        )  # (O, C, M)
        if mult == 1:
            gram = dw.square().sum(-1).squeeze(-1)  # (C,)
            g = pw.squeeze(-1).square() * gram  # (O, C)
        else:
            # The combined weight itself, not the Gram shortcut sum P G P^T: where the M
            # products nearly cancel, squaring after the sum keeps float32's rounding at the
            # terms' size; the shortcut would cancel squared terms and lose twice the digits.
            combined = torch.einsum("ocm,cmk->ock", pw, dw)  # (O, C, K)
            g = combined.square().sum(-1)  # (O, C)
        sumsq = styles.to(dtype).square() @ g.t()  # (N, O)
        return torch.rsqrt(sumsq + eps) * gain


def modulated_separable_conv2d(
    x: Tensor,
    depthwise_weight: Tensor,
    pointwise_weight: Tensor,
    styles: Tensor,
    *,
    demodulate: bool = True,
    padding: PaddingSpec = "same",
    padding_mode: str = "zeros",
    upsample: bool = False,
    eps: float = 1e-8,
    fused_modconv: bool | None = None,
) -> Tensor:
    """Modulated depthwise-separable 2d convolution (StyleGAN2's modulated conv, separable).

    Args:
        x: ``(N, C, H, W)``.
        depthwise_weight: ``(C*M, 1, kH, kW)``, ``M`` the depth multiplier.
        pointwise_weight: ``(O, C*M, 1, 1)`` or ``(O, C*M)``.
        styles: ``(N, C)``, the per-sample, per-input-channel scales ``s`` (e.g. an affine map
            of the style vector with bias initialised to 1).
        demodulate: normalise each output channel per sample by the norm of its combined
            modulated weight (see the module docstring).
        padding: of the depthwise stage: int, tuple, ``"same"`` (default) or ``"valid"``.
            With ``upsample=True`` only ``"same"`` is accepted (the output is ``(2H, 2W)``).
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (not with
            ``upsample``).
        upsample: the depthwise stage is a stride-2 transposed conv giving ``(2H, 2W)``.
        eps: added to the sum of squares before the reciprocal square root.
        fused_modconv: True folds the scales into per-sample weights and runs grouped
            convolutions (groups ``N*C`` and ``N``); False scales the activations around
            shared-weight convolutions. Same result. None (default): True for contiguous
            inputs, False for channels_last inputs.

    Returns ``(N, O, H', W')``: ``H' = H`` with ``"same"``, ``2H`` with ``upsample``.
    The result has ``x``'s memory format (channels_last in, channels_last out).
    """
    channels, mult, kernel, out_channels, pw = _check(x, depthwise_weight, pointwise_weight, styles)
    batch, _, height, width = x.shape
    if not isinstance(upsample, bool):
        raise TypeError(f"upsample must be a bool, got {upsample!r}")
    if not isinstance(demodulate, bool):
        raise TypeError(f"demodulate must be a bool, got {demodulate!r}")
    mode = check.padding_mode(padding_mode)
    if upsample:
        if padding != "same" or mode != "zeros":
            raise ValueError(
                "upsample=True fixes the geometry (output 2H x 2W, zero padding): padding must be "
                f"'same' and padding_mode 'zeros', got padding={padding!r}, padding_mode={padding_mode!r}"
            )
        plan = None
    else:
        plan = resolve_padding(padding, kernel, (1, 1), (1, 1))

    dcoef = None
    if demodulate:
        dcoef = demodulation_coefficients(
            depthwise_weight, pw, styles, eps, gain=float(_UP) if upsample else 1.0
        )
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if fused_modconv is None:
        fused_modconv = not channels_last

    if fused_modconv:
        # Depthwise: per-sample weights D[cM+m] * s[n, c], batch folded into the channels.
        dw = depthwise_weight.reshape(1, channels, mult, *kernel) * styles.reshape(
            batch, channels, 1, 1, 1
        ).to(depthwise_weight.dtype)
        xf = x.reshape(1, batch * channels, height, width)
        mid = _depthwise(
            xf,
            dw.reshape(batch * channels * mult, 1, *kernel),
            batch * channels,
            mult,
            kernel,
            plan,
            mode,
            upsample,
        )
        # Pointwise: per-sample weights P[o] * d[n, o], groups = N.
        pwn = pw.reshape(1, out_channels, channels * mult)
        if dcoef is not None:
            pwn = pwn * dcoef.to(pw.dtype).reshape(batch, out_channels, 1)
        else:
            pwn = pwn.expand(batch, out_channels, channels * mult)
        out = F.conv2d(mid, pwn.reshape(batch * out_channels, channels * mult, 1, 1), groups=batch)
        out = out.reshape(batch, out_channels, *out.shape[2:])
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    xs = x * styles.reshape(batch, channels, 1, 1).to(x.dtype)
    mid = _depthwise(xs, depthwise_weight, channels, mult, kernel, plan, mode, upsample)
    out = F.conv2d(mid, pw)
    if dcoef is not None:
        out = out * dcoef.reshape(batch, out_channels, 1, 1).to(out.dtype)
    return out


def _depthwise(x, weight, groups, mult, kernel, plan, mode, upsample):
    """Depthwise stage of ``x`` ``(B, G, H, W)`` with ``weight`` ``(G*M, 1, *kernel)``."""
    if upsample:
        padding, output_padding = upsample_geometry(kernel)
        return F.conv_transpose2d(
            x, weight.reshape(groups, mult, *kernel), None, _UP, padding, output_padding, groups
        )
    return conv_forward(x, weight, None, (1, 1), (1, 1), groups, plan, mode)


def _check(x, depthwise_weight, pointwise_weight, styles):
    for name, value in (
        ("x", x),
        ("depthwise_weight", depthwise_weight),
        ("pointwise_weight", pointwise_weight),
        ("styles", styles),
    ):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    batch, channels = x.shape[:2]
    shape = tuple(depthwise_weight.shape)
    if depthwise_weight.dim() != 4 or shape[1] != 1 or shape[0] == 0 or shape[0] % channels != 0:
        raise ValueError(
            f"depthwise_weight must have shape (C*M, 1, kH, kW) = ({channels}*M, 1, kH, kW) for an "
            f"input with C={channels} channels, got {shape}"
        )
    mid = shape[0]
    pw = pointwise_weight
    if pw.dim() == 2:
        pw = pw.reshape(*pw.shape, 1, 1)
    if pw.dim() != 4 or tuple(pw.shape[1:]) != (mid, 1, 1) or pw.shape[0] == 0:
        raise ValueError(
            f"pointwise_weight must have shape (O, {mid}, 1, 1) or (O, {mid}) for a depthwise stage "
            f"with {mid} outputs, got {tuple(pointwise_weight.shape)}"
        )
    if tuple(styles.shape) != (batch, channels):
        raise ValueError(
            f"styles must have shape (N, C) = ({batch}, {channels}) for an input of shape "
            f"{tuple(x.shape)}, got {tuple(styles.shape)}"
        )
    return channels, mid // channels, shape[2:], pw.shape[0], pw
