"""The per-input-channel SVD ("DP") decomposition of a dense convolution weight.

For a conv with ``C`` input channels, ``O`` outputs, ``G`` groups and kernel ``K``
(``P = prod(K)`` taps), input channel ``c`` of group ``g`` is read by the ``O/G``
outputs of that group through the matrix ``W_c = W[g*O/G:(g+1)*O/G, c % (C/G)]``
reshaped to ``(O/G, P)``. With ``W_c = U_c S_c V_c^T``:

- the depthwise stage gets ``R`` filters per input channel, ``V_c^T[r]`` reshaped to ``K``,
  as depthwise channel ``c*R + r``;
- the pointwise stage (``G`` groups) gets ``U_c[:, r] * S_c[r]`` as the weight from
  depthwise channel ``c*R + r`` to the outputs of group ``g``.

``sum_r U_c[:, r] S_c[r] V_c^T[r] = W_c`` when ``R = min(O/G, P)``, so the separable
layer then equals the dense one exactly; a smaller ``R`` is the best rank-``R``
approximation of every ``W_c`` (Eckart–Young), with squared Frobenius error the sum of
the dropped ``S_c[r]**2``. This is the "DP" decomposition of Network Decoupling (Guo et
al., BMVC 2018) and DAC (Li et al., WACV 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Factors:
    """SVD factors of every input channel, in float64.

    ``u``: ``(C, O/G, r0)``, ``s``: ``(C, r0)``, ``vh``: ``(C, r0, P)`` with ``r0 = min(O/G, P)``.
    """

    u: Tensor
    s: Tensor
    vh: Tensor
    groups: int
    kernel_size: tuple[int, ...]

    @property
    def max_rank(self) -> int:
        return self.s.shape[1]

    def lost_energy(self) -> Tensor:
        """``lost[R]``: relative squared Frobenius error of rank ``R``, for ``R = 0..r0``."""
        sq = self.s.square().sum(dim=0)  # energy of each rank position, summed over channels
        total = float(sq.sum())
        tail = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])  # tail[R] = sum_{r>=R}
        lost = torch.cat([tail, tail.new_zeros(1)])
        return lost / total if total > 0 else torch.zeros_like(lost)

    def weights(self, rank: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Depthwise ``(C*R, 1, *K)`` and pointwise ``(O, C*R/G, *(1,)*len(K))`` weights of rank ``R``."""
        channels, out_per_group, _ = self.u.shape
        groups = self.groups
        in_per_group = channels // groups
        depthwise = self.vh[:, :rank, :].reshape(channels * rank, 1, *self.kernel_size)
        us = self.u[:, :, :rank] * self.s[:, None, :rank]  # (C, O/G, R)
        pointwise = (
            us.reshape(groups, in_per_group, out_per_group, rank)
            .permute(0, 2, 1, 3)
            .reshape(groups * out_per_group, in_per_group * rank, *(1,) * len(self.kernel_size))
        )
        return depthwise.to(dtype).contiguous(), pointwise.to(dtype).contiguous()


def factorize(weight: Tensor, groups: int) -> Factors:
    """SVD of each input channel's ``(O/G, P)`` slice of a dense ``(O, C/G, *K)`` weight (float64)."""
    out_channels, in_per_group = weight.shape[:2]
    kernel = tuple(weight.shape[2:])
    taps = 1
    for k in kernel:
        taps *= k
    out_per_group = out_channels // groups
    slices = (
        weight.detach()
        .to(torch.float64)
        .reshape(groups, out_per_group, in_per_group, taps)
        .permute(0, 2, 1, 3)
        .reshape(groups * in_per_group, out_per_group, taps)
    )
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)
    return Factors(u, s, vh, groups, kernel)


def rank_for_energy(factors: Factors, energy: float) -> int:
    """Smallest rank whose kept share of squared singular values (all channels) reaches ``energy``."""
    lost = factors.lost_energy()
    for rank in range(1, factors.max_rank + 1):
        if 1.0 - float(lost[rank]) >= energy - 1e-12:
            return rank
    return factors.max_rank
