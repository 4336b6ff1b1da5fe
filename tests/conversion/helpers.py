"""Small helpers shared by the conversion tests."""

from __future__ import annotations

import torch
from torch import nn


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-300))


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(
        torch.equal(state[k], snapshot[k]) for k in state
    )


class SmallCNN(nn.Module):
    """A VGG-ish net with a shared conv, a ModuleList and a ModuleDict."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList(
            [nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3, padding=1)]
        )
        self.heads = nn.ModuleDict({"proj": nn.Conv2d(16, 16, 1)})
        self.shared = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        x = self.heads["proj"](x)
        x = torch.relu(self.shared(x))
        x = torch.relu(self.shared(x))  # the same conv used twice
        return self.fc(x.mean(dim=(2, 3)))


def smooth_images(
    n: int, channels: int = 3, size: int = 16, seed: int = 0, dtype=torch.float64
) -> torch.Tensor:
    """Random but spatially correlated images (low-pass noise): more like real inputs than white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size // 4, size // 4, generator=g, dtype=dtype)
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False
    )
