"""Run by test_distill under ``torchrun --nproc_per_node=2``: distill with no DDP-specific code.

Writes ``rank<R>.json`` (losses, a parameter checksum) into the folder given as argv[1].
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

import sepconv


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    student = sepconv.to_separable(teacher, rank=1)
    g = torch.Generator().manual_seed(1)
    data = [
        torch.randn(8, 3, 8, 8, generator=g) for _ in range(7)
    ]  # 7 batches: uneven across 2 ranks
    result = sepconv.distill(student, teacher, data, epochs=3, lr=3e-3)
    checksum = float(sum(p.detach().double().sum() for p in student.parameters()))
    rank = int(os.environ["RANK"])
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
        json.dump(
            {
                "losses": result.losses,
                "steps": result.steps,
                "world": result.world_size,
                "checksum": checksum,
                "initialized_after": torch.distributed.is_initialized(),
            },
            handle,
        )


if __name__ == "__main__":
    main()
