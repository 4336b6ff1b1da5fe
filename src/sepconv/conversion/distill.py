"""Knowledge-distillation fine-tuning after conversion: :func:`distill`.

Runs in one process, or under ``torchrun --nproc_per_node=N`` with
DistributedDataParallel (gloo on CPU, nccl on GPU) with no code change: the
environment variables ``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) switch it on.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DistillResult:
    """What :func:`distill` did.

    ``losses``/``kl``: mean total loss and mean (temperature-scaled) KL per epoch,
    averaged over all processes; ``steps``: optimizer steps per process;
    ``world_size``: number of processes.
    """

    losses: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    steps: int = 0
    world_size: int = 1


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over samples (class dim 1)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher outputs differ in shape: {tuple(student_logits.shape)} "
            f"vs {tuple(teacher_logits.shape)}"
        )
    s = student_logits.float()
    t = teacher_logits.float()
    if s.dim() > 2:  # (N, K, *rest): every position is a sample
        s = s.movedim(1, -1).reshape(-1, s.shape[1])
        t = t.movedim(1, -1).reshape(-1, t.shape[1])
    log_s = F.log_softmax(s / temperature, dim=-1)
    log_t = F.log_softmax(t / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2


def _split(item: Any) -> tuple[Any, Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, tuple | list) and item:
        label = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        return item[0], label
    raise TypeError(f"data must yield tensors or (input, target) pairs, got {type(item).__name__}")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, tuple | list):
        return type(x)(_to(v, device) for v in x)
    return x


@contextlib.contextmanager
def _capture(
    pairs: Mapping[str, str], student: nn.Module, teacher: nn.Module
) -> Iterator[dict[str, list]]:
    """Record the outputs of the named student/teacher modules while models run."""
    store: dict[str, list] = {"student": [], "teacher": []}
    handles = []
    s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
    for s_name, t_name in pairs.items():
        if s_name not in s_modules:
            raise ValueError(f"features: the student has no module named {s_name!r}")
        if t_name not in t_modules:
            raise ValueError(f"features: the teacher has no module named {t_name!r}")
    for index, (s_name, t_name) in enumerate(pairs.items()):

        def grab(side: str, i: int) -> Callable:
            def hook(module, inputs, output):
                buf = store[side]
                while len(buf) <= i:
                    buf.append(None)
                buf[i] = output

            return hook

        handles.append(s_modules[s_name].register_forward_hook(grab("student", index)))
        handles.append(t_modules[t_name].register_forward_hook(grab("teacher", index)))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _distributed(device: torch.device | None) -> tuple[int, int, int, bool]:
    """``(world_size, rank, local_rank, initialised_here)``; initialises the process group
    from torchrun's environment when needed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), False
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 1, 0, 0, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device is not None and device.type == "cuda"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_world_size(), dist.get_rank(), local_rank, True


def _shard(data: Iterable, world: int, rank: int, epoch: int, seed: int) -> Iterable:
    """This process's share of ``data``: a DistributedSampler for map-style DataLoaders,
    every ``world``-th batch otherwise."""
    from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

    if world == 1:
        return data
    if (
        isinstance(data, DataLoader)
        and not isinstance(data.dataset, IterableDataset)
        and data.batch_size is not None
    ):
        sampler = data.sampler
        if not isinstance(sampler, DistributedSampler):
            sampler = DistributedSampler(
                data.dataset,
                num_replicas=world,
                rank=rank,
                shuffle=isinstance(data.sampler, RandomSampler),
                seed=seed,
                drop_last=data.drop_last,
            )
        sampler.set_epoch(epoch)
        return DataLoader(
            data.dataset,
            batch_size=data.batch_size,
            sampler=sampler,
            num_workers=data.num_workers,
            collate_fn=data.collate_fn,
            pin_memory=data.pin_memory,
            drop_last=data.drop_last,
        )
    return (item for index, item in enumerate(data) if index % world == rank)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Iterable[Any],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    temperature: float = 4.0,
    kl_weight: float = 1.0,
    label_weight: float = 0.0,
    features: Iterable[str] | Mapping[str, str] | None = None,
    feature_weight: float = 1.0,
    optimizer: str | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = "adam",
    weight_decay: float = 0.0,
    max_steps: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> DistillResult:
    """Fine-tune ``student`` to match ``teacher`` (knowledge distillation); trains ``student`` in place.

    Loss per batch: ``kl_weight * T^2 * KL(softmax(teacher/T) || softmax(student/T))``
    plus ``feature_weight * MSE`` between the outputs of the ``features`` modules (names
    in the student, mapped to teacher names by a dict, or the same names in both, which is
    what :func:`to_separable` keeps), plus ``label_weight * cross_entropy`` when ``data``
    yields ``(input, label)`` pairs.

    Args:
        student, teacher: models with outputs of the same shape (logits, class dim 1).
        data: an iterable of batches (tensors or ``(input, target)`` pairs), e.g. a DataLoader;
            it is iterated once per epoch, so it must be re-iterable for ``epochs > 1``.
        epochs, lr, weight_decay: the schedule; ``optimizer`` is ``"adam"``, ``"sgd"``
            (momentum 0.9) or a callable ``params -> Optimizer``.
        temperature: softening temperature ``T`` of both logits.
        max_steps: stop after this many optimizer steps (per process).
        device: where to train (default: the student's device; under torchrun on GPUs,
            ``cuda:LOCAL_RANK``). Both models are moved there.
        seed: for the distributed sampler's shuffling.
        log: called with one line per epoch (on rank 0 only).

    Distributed: when ``WORLD_SIZE > 1`` (as under ``torchrun``) or a process group is
    already initialised, the process group is initialised if needed (gloo on CPU, nccl on
    CUDA), the student is wrapped in DistributedDataParallel, and each process takes its
    share of ``data`` (a DistributedSampler for a map-style DataLoader, every N-th batch
    otherwise). Processes stop an epoch together when any runs out of batches. A process
    group created here is destroyed at the end.

    Returns a :class:`DistillResult` with per-epoch mean losses.
    """
    for name, value in (("student", student), ("teacher", teacher)):
        if not isinstance(value, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    for name, value in (("lr", lr), ("temperature", temperature)):
        if not isinstance(value, int | float) or not value > 0 or math.isinf(value):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    for name, value in (
        ("kl_weight", kl_weight),
        ("label_weight", label_weight),
        ("feature_weight", feature_weight),
        ("weight_decay", weight_decay),
    ):
        if not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if max_steps is not None and (
        isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1
    ):
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if features is None:
        pairs: dict[str, str] = {}
    elif isinstance(features, Mapping):
        pairs = dict(features)
    elif isinstance(features, str):
        pairs = {features: features}
    else:
        pairs = {name: name for name in features}
    if kl_weight == 0 and label_weight == 0 and (not pairs or feature_weight == 0):
        raise ValueError("all loss weights are zero: nothing to train")

    if device is None:
        param = next(iter(student.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    world, rank, local_rank, created = _distributed(device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    student.to(device)
    teacher.to(device)
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the student has no trainable parameters")

    model: nn.Module = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if callable(optimizer):
        opt = optimizer(params)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam', 'sgd' or a callable, got {optimizer!r}")

    student_mode, teacher_mode = student.training, teacher.training
    result = DistillResult(world_size=world)
    try:
        student.train()
        teacher.eval()
        with _capture(pairs, student, teacher) as store:
            for epoch in range(epochs):
                totals = torch.zeros(3, dtype=torch.float64)  # loss sum, kl sum, batches
                iterator = iter(_shard(data, world, rank, epoch, seed))
                while max_steps is None or result.steps < max_steps:
                    item = next(iterator, None)
                    if world > 1:  # stop together when any process has run out
                        flag = torch.tensor([0 if item is None else 1], device=device)
                        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                        if int(flag) == 0:
                            break
                    elif item is None:
                        break
                    inputs, labels = _split(item)
                    inputs = _to(inputs, device)
                    with torch.no_grad():
                        target = teacher(inputs)
                    output = model(inputs)
                    kl = kd_loss(output, target, temperature)
                    loss = kl_weight * kl
                    if pairs and feature_weight > 0:
                        for s_out, t_out in zip(store["student"], store["teacher"]):
                            loss = loss + feature_weight * F.mse_loss(
                                s_out.float(), t_out.detach().float()
                            )
                    if label_weight > 0 and labels is not None:
                        loss = loss + label_weight * F.cross_entropy(
                            output.float(), labels.to(device)
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    result.steps += 1
                    totals += torch.tensor(
                        [float(loss.detach()), float(kl.detach()), 1.0], dtype=torch.float64
                    )
                if world > 1:
                    reduced = totals.to(device) if device.type == "cuda" else totals
                    dist.all_reduce(reduced)
                    totals = reduced.cpu()
                batches = max(float(totals[2]), 1.0)
                result.losses.append(float(totals[0]) / batches)
                result.kl.append(float(totals[1]) / batches)
                if log is not None and rank == 0:
                    log(
                        f"distill epoch {epoch + 1}/{epochs}: loss {result.losses[-1]:.4f}, kl {result.kl[-1]:.4f}"
                    )
                if max_steps is not None and result.steps >= max_steps:
                    break
    finally:
        student.train(student_mode)
        teacher.train(teacher_mode)
        if created:
            # The DDP wrapper (its reducer holds the process group) must go first.
            del model, opt
            gc.collect()
            dist.destroy_process_group()
    return result
