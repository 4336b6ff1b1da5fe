"""The demo pipeline: train a CNN on the digits, convert it to separable form three ways,
and train the separable network from scratch for comparison.

1. train the standard CNN (:func:`sepconv.models.digits.digits_cnn`);
2. convert it with :func:`sepconv.to_separable` at rank ``R``, data-free (SVD only);
3. convert it with calibration data (pointwise stages refit by least squares);
4. fine-tune the calibrated network by distillation from the original (:func:`sepconv.distill`);
5. train the same separable network from scratch.

Deterministic: one seed fixes the split, the init, the data order and the augmentation;
PyTorch runs with deterministic algorithms and a fixed thread count, so every run on a
machine gives the same accuracies. Under ``torchrun`` (or ``sepconv demo --distributed``)
training and distillation use DistributedDataParallel over gloo; rank 0 measures and reports.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sepconv.demo.metrics import count_macs, count_params, measure_latency
from sepconv.models import digits

# Full and --fast settings. ``epochs`` (teacher and from-scratch training) can be overridden
# by --epochs; distillation runs ``distill_epochs``.
FULL = dict(epochs=30, distill_epochs=20, calibration_samples=1024, latency_repeat=25)
FAST = dict(epochs=3, distill_epochs=2, calibration_samples=256, latency_repeat=3)


@dataclass
class DemoConfig:
    """Options of ``sepconv demo``. ``None`` means the full/--fast default."""

    epochs: int | None = None
    rank: int = 2
    seed: int = 0
    out: Path = Path("sepconv-demo")
    fast: bool = False
    width: int = 32
    distill_epochs: int | None = None
    threads: int = 1
    lr: float = 0.01
    distill_lr: float = 0.003
    batch_size: int = 64
    latency_batch: int = 256
    calibration_samples: int | None = None
    latency_repeat: int | None = None

    def resolved(self) -> DemoConfig:
        """A copy with every ``None`` replaced by the full or --fast default, checked."""
        defaults = FAST if self.fast else FULL
        values = asdict(self)
        for key, value in defaults.items():
            if values[key] is None:
                values[key] = value
        values["out"] = Path(values["out"])
        config = DemoConfig(**values)
        for name in (
            "epochs",
            "distill_epochs",
            "rank",
            "width",
            "threads",
            "batch_size",
            "latency_batch",
        ):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if config.seed < 0:
            raise ValueError(f"seed must be >= 0, got {config.seed!r}")
        _check_out_folder(config.out)
        return config


def _check_out_folder(out: Path) -> None:
    """Fail before training, not after, when ``out`` cannot become a folder."""
    existing = next((path for path in (out, *out.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"out must be a folder, but {existing} is a file (got out={str(out)!r})")


@dataclass
class Row:
    """One model of the table."""

    key: str
    model: str
    params: int
    macs: int
    latency_s: float
    accuracy: float


@dataclass
class DemoResult:
    """Everything the demo measured (rank 0 only)."""

    config: DemoConfig
    rows: list[Row]
    world_size: int
    elapsed_s: float
    plan: str = ""
    files: list[Path] = field(default_factory=list)

    def row(self, key: str) -> Row:
        """The row with ``key`` (``dense``, ``svd``, ``calibrated``, ``distilled``, ``scratch``)."""
        return next(r for r in self.rows if r.key == key)

    @property
    def original(self) -> Row:
        return self.row("dense")

    def macs_reduction(self, key: str) -> float:
        """How many times fewer MACs than the original the model ``key`` needs."""
        return self.original.macs / self.row(key).macs

    def accuracy_drop(self, key: str) -> float:
        """Points of test accuracy lost against the original (negative: gained)."""
        return 100.0 * (self.original.accuracy - self.row(key).accuracy)

    @property
    def target_met(self) -> bool:
        """The distilled network within 1 point of the original at >= 3x fewer MACs."""
        return (
            self.accuracy_drop("distilled") <= 1.0 + 1e-9
            and self.macs_reduction("distilled") >= 3.0
        )


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic algorithms and a fixed thread count, restored afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


class _Stages:
    """Rich progress bars, one per stage (shown on rank 0 only)."""

    def __init__(self, progress) -> None:
        self.progress = progress

    @contextlib.contextmanager
    def stage(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        if self.progress is None:
            yield lambda *args, **kwargs: None
            return
        task = self.progress.add_task(description, total=max(1, total))

        def advance(*_args, **_kwargs) -> None:
            self.progress.advance(task)

        try:
            yield advance
        finally:
            self.progress.update(task, completed=max(1, total))


def run_pipeline(config: DemoConfig, *, progress=None) -> DemoResult | None:
    """Run the five steps; returns the measurements on rank 0 and ``None`` on other ranks.

    ``progress``: a ``rich.progress.Progress`` to add the stage bars to (or ``None``).
    """
    import sepconv

    config = config.resolved()
    start = time.perf_counter()
    rank, world = digits.world()
    stages = _Stages(progress if rank == 0 else None)
    with deterministic(config.threads):
        data = digits.load_digits_split(config.seed)
        steps = len(data.x_train) // config.batch_size
        common = dict(batch_size=config.batch_size, seed=config.seed, fill=data.background)

        # 1. the standard CNN
        torch.manual_seed(config.seed)
        dense = digits.digits_cnn(config.width)
        with stages.stage("1/5 train the CNN", config.epochs * steps) as advance:
            digits.train(
                dense,
                data.x_train,
                data.y_train,
                epochs=config.epochs,
                lr=config.lr,
                on_step=advance,
                **common,
            )

        # 2. data-free conversion
        with stages.stage(f"2/5 convert, rank {config.rank}", 1) as advance:
            svd = sepconv.to_separable(dense, rank=config.rank, exclude=digits.STEM)
            advance()

        # 3. calibrated conversion
        calibration = digits.batches(data.x_train, 256, limit=config.calibration_samples)
        with stages.stage("3/5 calibrate", 1) as advance:
            plan = sepconv.plan_separable(
                dense, rank=config.rank, exclude=digits.STEM, calibration=calibration
            )
            calibrated = sepconv.to_separable(dense, plan)
            advance()

        # 4. distillation from the original (KL on softened logits)
        student = copy.deepcopy(calibrated)
        with stages.stage("4/5 distill from the original", config.distill_epochs) as advance:
            sepconv.distill(
                student,
                dense,
                _DistillData(data, config.batch_size, config.seed),
                epochs=config.distill_epochs,
                lr=config.distill_lr,
                seed=config.seed,
                log=advance,
            )
        student.eval()

        # 5. the same separable network from scratch
        torch.manual_seed(config.seed + 1)
        scratch = digits.digits_cnn(config.width, separable=True, rank=config.rank)
        with stages.stage("5/5 train separable from scratch", config.epochs * steps) as advance:
            digits.train(
                scratch,
                data.x_train,
                data.y_train,
                epochs=config.epochs,
                lr=config.lr,
                on_step=advance,
                **common,
            )

        if rank != 0:
            return None
        models = [
            ("dense", "CNN (original)", dense),
            ("svd", f"separable r{config.rank}, data-free", svd),
            ("calibrated", f"separable r{config.rank}, calibrated", calibrated),
            ("distilled", f"separable r{config.rank}, distilled", student),
            ("scratch", f"separable r{config.rank}, from scratch", scratch),
        ]
        rows = []
        with stages.stage("measure latency", len(models)) as advance:
            latency_batch = data.x_test[: config.latency_batch]
            for key, name, model in models:
                model.eval()
                rows.append(
                    Row(
                        key,
                        name,
                        count_params(model),
                        count_macs(model, data.x_test[:1]),
                        measure_latency(model, latency_batch, repeat=config.latency_repeat),
                        digits.evaluate(model, data.x_test, data.y_test),
                    )
                )
                advance()
    return DemoResult(config, rows, world, time.perf_counter() - start, plan=_plan_text(plan))


class _DistillData:
    """Distillation batches: augmented, fixed-order batches like training, a new epoch (new order)
    each time it is iterated; yields input tensors.

    With ``W`` processes, each global batch is yielded as ``W`` consecutive slices; since
    :func:`sepconv.distill` gives process ``r`` every ``W``-th item, process ``r`` gets slice
    ``r`` of every global batch -- the same split as :func:`sepconv.models.digits.train`.
    """

    def __init__(self, data: digits.DigitsSplit, batch_size: int, seed: int) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.epoch = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = self.epoch
        self.epoch += 1
        _, world = digits.world()
        for xb, _ in digits.epoch_batches(
            self.data.x_train,
            self.data.y_train,
            batch_size=self.batch_size,
            epoch=10_000 + epoch,
            seed=self.seed,
            augment=True,
            fill=self.data.background,
        ):
            for part in range(world):
                yield xb[part::world]


def _plan_text(plan: object) -> str:
    try:
        from rich.console import Console

        console = Console(width=140, record=True, file=io.StringIO())
        console.print(plan)
        return console.export_text()
    except Exception:
        return str(plan)
