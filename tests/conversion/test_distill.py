"""distill: single process reduces the KL; two processes under torchrun (gloo, CPU) agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sepconv
from sepconv.conversion import kd_loss


def teacher_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


def mean_kl(student, teacher, data) -> float:
    with torch.no_grad():
        return sum(float(kd_loss(student(x), teacher(x), 4.0)) for x in data) / len(data)


def test_distill_reduces_the_kl_loss():
    teacher = teacher_net().eval()
    student = sepconv.to_separable(teacher, rank=1)
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(16, 3, 8, 8, generator=g) for _ in range(8)]
    before = mean_kl(student, teacher, data)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = sepconv.distill(student, teacher, data, epochs=4, lr=3e-3)
    after = mean_kl(student, teacher, data)
    assert after < 0.5 * before
    assert len(result.losses) == 4 and result.losses[-1] < result.losses[0]
    assert result.steps == 32 and result.world_size == 1
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training


def test_distill_with_features_labels_and_max_steps():
    teacher = teacher_net()
    student = sepconv.to_separable(teacher, rank=2)
    g = torch.Generator().manual_seed(2)
    data = [
        (torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g))
        for _ in range(6)
    ]
    lines = []
    result = sepconv.distill(
        student,
        teacher,
        data,
        epochs=3,
        lr=1e-3,
        features=["2"],
        feature_weight=0.5,
        label_weight=0.1,
        optimizer="sgd",
        max_steps=10,
        log=lines.append,
    )
    assert result.steps == 10 and len(result.losses) == 2
    assert lines and lines[0].startswith("distill epoch 1/3")
    assert teacher.training and student.training  # modes restored


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"temperature": 0}, "temperature"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"kl_weight": 0.0}, "nothing to train"),
        ({"features": ["nope"]}, "no module named 'nope'"),
    ],
)
def test_distill_bad_arguments(kwargs, match):
    teacher = teacher_net()
    student = sepconv.to_separable(teacher, rank=1)
    with pytest.raises(ValueError, match=match):
        sepconv.distill(
            student, teacher, [torch.randn(2, 3, 8, 8)], **{"epochs": 1, "lr": 1e-3, **kwargs}
        )


def test_distill_under_torchrun_two_processes(tmp_path: Path):
    script = Path(__file__).with_name("ddp_distill_script.py")
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")]),
    }
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        assert result["world"] == 2
        assert (
            result["steps"] == 9
        )  # 7 batches over 2 ranks: 3 steps per epoch (the 7th is dropped)
        assert result["losses"][-1] < result["losses"][0]
        assert (
            result["initialized_after"] is False
        )  # the process group made by distill is cleaned up
    assert results[0]["losses"] == results[1]["losses"]  # all-reduced
    assert (
        abs(results[0]["checksum"] - results[1]["checksum"]) < 1e-9
    )  # DDP kept the replicas in sync
