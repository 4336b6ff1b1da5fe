"""Deciding which convolutions become separable, at which rank: :class:`Plan`.

:func:`plan_separable` walks a model, finds every ``nn.Conv1d/2d/3d`` (and sepconv's
``PaddedConvNd``), decides for each whether and at which rank it becomes a
``SeparableConvNd``, and returns a :class:`Plan`: a table you can print and edit
(``plan["features.3"].rank = 2``, ``plan.skip("features.0")``) before
:func:`sepconv.to_separable` applies it.
"""

from __future__ import annotations

import fnmatch
import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sepconv.conversion import _walk
from sepconv.conversion.decompose import Factors, factorize, rank_for_energy

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(eq=False)
class LayerPlan:
    """What happens to one convolution (one row of the plan).

    ``rank`` is the depth multiplier of the separable form (``None`` when the layer is
    skipped); assign to it to change the rank (``None`` means exact, ``max_rank``) or
    to convert a layer the plan skipped. ``skipped`` holds the reason a layer stays dense.
    """

    name: str
    aliases: list[str]
    kind: str
    geometry: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    groups: int
    has_bias: bool
    eligible: bool
    skipped: str | None = None
    positions: int = 1
    refit_bias: bool = False  # the calibration refit gives the pointwise stage a bias
    _rank: int | None = None
    _module: nn.Module | None = field(default=None, repr=False)
    _factors: Factors | None = field(default=None, repr=False)
    output_error: float | None = None
    calibrated_error: float | None = None

    # --------------------------------------------------------------- rank and skipping
    @property
    def taps(self) -> int:
        return _walk.prod(self.kernel_size)

    @property
    def max_rank(self) -> int:
        """Rank of the exact separable form: ``min(out_channels / groups, prod(kernel))``."""
        return min(self.out_channels // self.groups, self.taps)

    @property
    def rank(self) -> int | None:
        return None if self.skipped is not None else self._rank

    @rank.setter
    def rank(self, value: int | None) -> None:
        if not self.eligible:
            raise ValueError(
                f"layer {_walk.display_name(self.name)!r} cannot become separable: {self.skipped}"
            )
        if value is None:
            value = self.max_rank
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"rank must be a positive int or None, got {value!r}")
        if not 1 <= value <= self.max_rank:
            raise ValueError(
                f"rank of layer {_walk.display_name(self.name)!r} must be in 1..{self.max_rank}, got {value}"
            )
        self._rank = value
        self.skipped = None
        self.output_error = self.calibrated_error = None

    @property
    def converted(self) -> bool:
        return self.skipped is None and self._rank is not None

    @property
    def factors(self) -> Factors:
        """Per-input-channel SVD of the layer's weight (computed on first use)."""
        if self._factors is None:
            if self._module is None:
                raise RuntimeError(f"layer {self.name!r} has no weight to factorize")
            _walk.check_finite(self._module, self.name)
            self._factors = factorize(self._module.weight, self.groups)
        return self._factors

    # --------------------------------------------------------------------- costs
    def separable_cost(self, rank: int) -> int:
        """MACs per output position of the rank-``rank`` separable form."""
        return self.in_channels * rank * (self.taps + self.out_channels // self.groups)

    @property
    def dense_cost(self) -> int:
        """MACs per output position of the dense conv."""
        return self.out_channels * (self.in_channels // self.groups) * self.taps

    @property
    def params_before(self) -> int:
        return self.dense_cost + (self.out_channels if self.has_bias else 0)

    @property
    def params_after(self) -> int:
        if not self.converted:
            return self.params_before
        return self.separable_cost(self._rank) + (
            self.out_channels if self.has_bias or self.refit_bias else 0
        )

    @property
    def macs_before(self) -> int:
        return self.dense_cost * self.positions

    @property
    def macs_after(self) -> int:
        return (
            self.separable_cost(self._rank) * self.positions if self.converted else self.macs_before
        )

    @property
    def weight_error(self) -> float:
        """Relative Frobenius error of the separable weight (0 for exact or skipped layers)."""
        if not self.converted:
            return 0.0
        return math.sqrt(max(float(self.factors.lost_energy()[self._rank]), 0.0))

    @property
    def note(self) -> str:
        if self.skipped is not None:
            return self.skipped
        parts = []
        if self._rank == self.max_rank:
            parts.append("exact")
        if self.separable_cost(self._rank) >= self.dense_cost:
            parts.append(f"costs {self.separable_cost(self._rank) / self.dense_cost:.2f}x dense")
        if len(self.aliases) > 1:
            parts.append("shared: also " + ", ".join(self.aliases[1:]))
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The row as plain data (for JSON)."""
        return {
            "name": self.name,
            "aliases": self.aliases[1:],
            "kind": self.kind,
            "shape": self.geometry,
            "rank": self.rank,
            "max_rank": self.max_rank if self.eligible else None,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "weight_error": self.weight_error,
            "output_error": self.output_error,
            "calibrated_error": self.calibrated_error,
            "skipped": self.skipped,
        }


class Plan:
    """The conversion plan of a model: one :class:`LayerPlan` per convolution found.

    Index by layer name (``plan["features.3"]``), iterate over rows, print it (a rich
    table), edit it (``plan["features.3"].rank = 2``, ``plan.skip("features.0")``), then
    apply it with ``sepconv.to_separable(model, plan)``.

    Attributes:
        layers: the rows, in model order.
        mode: how the ranks were chosen (``"exact"``, ``"rank=2"``, ``"energy=0.9"``, ``"budget=0.5"``).
        calibration: the example inputs for the least-squares refit, or None.
        ridge: relative ridge of the refit.
        input_size: input shape MACs were measured with; None means MACs are per output position.
        notes: remarks (nothing eligible, budget not reachable, ...).
    """

    def __init__(
        self,
        layers: list[LayerPlan],
        *,
        mode: str,
        calibration: list | None = None,
        ridge: float = 1e-3,
        input_size: tuple[int, ...] | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.layers = layers
        self.mode = mode
        self.calibration = calibration
        self.ridge = ridge
        self.input_size = input_size
        self.notes = list(notes or [])
        self._by_name: dict[str, LayerPlan] = {}
        for layer in layers:
            layer.refit_bias = calibration is not None
            for alias in layer.aliases:
                self._by_name.setdefault(alias, layer)

    # ------------------------------------------------------------------ access
    def __getitem__(self, name: str) -> LayerPlan:
        try:
            return self._by_name[name]
        except KeyError:
            close = [n for n in self._by_name if name and (name in n or n in name)][:5]
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"no convolution named {name!r} in the plan{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[LayerPlan]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def skip(self, name: str, reason: str = "skipped by user") -> None:
        """Keep layer ``name`` dense."""
        self[name].skipped = reason

    @property
    def converted(self) -> list[LayerPlan]:
        """The rows that become separable."""
        return [layer for layer in self.layers if layer.converted]

    # ------------------------------------------------------------------ totals
    @property
    def params_before(self) -> int:
        return sum(layer.params_before for layer in self.layers)

    @property
    def params_after(self) -> int:
        return sum(layer.params_after for layer in self.layers)

    @property
    def macs_before(self) -> int:
        return sum(layer.macs_before for layer in self.layers)

    @property
    def macs_after(self) -> int:
        return sum(layer.macs_after for layer in self.layers)

    @property
    def macs_ratio(self) -> float:
        """MACs after / before, over all convolutions of the model (1.0 when there are none)."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def summary(self) -> dict[str, Any]:
        """Totals and notes as plain data."""
        return {
            "mode": self.mode,
            "convs": len(self.layers),
            "converted": len(self.converted),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_ratio": self.macs_ratio,
            "params_ratio": self.params_ratio,
            "macs_per": "sample" if self.input_size is not None else "output position",
            "input_size": self.input_size,
            "calibrated": self.calibration is not None,
            "notes": list(self.notes),
        }

    def as_dicts(self) -> list[dict[str, Any]]:
        return [layer.as_dict() for layer in self.layers]

    # ------------------------------------------------------------------ display
    def table(self, *, show_skipped: bool = True):
        """The plan as a ``rich.table.Table``."""
        from rich.table import Table

        per = (
            f"per sample of {tuple(self.input_size)}"
            if self.input_size is not None
            else "per output position"
        )
        table = Table(
            title=f"sepconv conversion plan ({self.mode}; MACs {per})", title_justify="left"
        )
        show_out = any(layer.output_error is not None for layer in self.layers)
        for header, justify in [
            ("layer", "left"),
            ("conv", "left"),
            ("rank", "right"),
            ("params", "right"),
            ("MACs", "right"),
            ("weight err", "right"),
        ]:
            table.add_column(header, justify=justify)
        if show_out:
            table.add_column("output err svd→fit", justify="right")
        table.add_column("note", overflow="fold")
        for layer in self.layers:
            if not show_skipped and not layer.converted:
                continue
            rank = f"{layer.rank}/{layer.max_rank}" if layer.converted else "—"
            row = [
                _walk.display_name(layer.name),
                f"{layer.kind} {layer.geometry}",
                rank,
                _arrow(layer.params_before, layer.params_after),
                _arrow(layer.macs_before, layer.macs_after),
                f"{layer.weight_error:.2e}" if layer.converted else "",
            ]
            if show_out:
                if layer.output_error is None:
                    row.append("")
                elif layer.calibrated_error is None:
                    row.append(f"{layer.output_error:.2e}")
                else:
                    row.append(f"{layer.output_error:.2e}→{layer.calibrated_error:.2e}")
            row.append(layer.note)
            table.add_row(*row)
        table.add_section()
        total = [
            "total",
            f"{len(self.converted)} of {len(self.layers)} convs",
            "",
            _arrow(self.params_before, self.params_after) + f" ({self.params_ratio:.2f}x)",
            _arrow(self.macs_before, self.macs_after) + f" ({self.macs_ratio:.2f}x)",
            "",
        ]
        if show_out:
            total.append("")
        total.append("")
        table.add_row(*total)
        if self.notes:
            table.caption = "\n".join(self.notes)
            table.caption_justify = "left"
        return table

    def __rich__(self):
        return self.table()

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=160, force_terminal=False, color_system=None).print(self.table())
        return buffer.getvalue().rstrip("\n")

    def __repr__(self) -> str:
        return (
            f"Plan({self.mode}: {len(self.converted)} of {len(self.layers)} convs converted, "
            f"MACs x{self.macs_ratio:.3f}, params x{self.params_ratio:.3f})"
        )


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _arrow(before: int, after: int) -> str:
    return _human(before) if before == after else f"{_human(before)}→{_human(after)}"


# ====================================================================== planning


def check_options(rank: Any, energy: Any, budget: Any) -> str:
    """Validate the rank options; returns the mode text."""
    given = [
        name
        for name, value in (("rank", rank), ("energy", energy), ("budget", budget))
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give at most one of rank, energy and budget, got {' and '.join(given)}")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"rank must be a positive int, got {rank!r}")
        if rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank}")
        return f"rank={rank}"
    for name, value in (("energy", energy), ("budget", budget)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number in (0, 1], got {value!r}")
        if not (0.0 < float(value) <= 1.0) or math.isnan(value):
            raise ValueError(f"{name} must be in (0, 1], got {value}")
        return f"{name}={value:g}"
    return "exact"


def _patterns(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{what} must be a name pattern or a list of them, got {value!r}") from None
    if not all(isinstance(item, str) for item in items):
        raise TypeError(f"{what} must hold strings (layer names or glob patterns), got {value!r}")
    return items


def _matches(names: list[str], patterns: list[str]) -> bool:
    for name in names:
        for pattern in patterns:
            if (
                name == pattern
                or fnmatch.fnmatchcase(name, pattern)
                or name.startswith(pattern + ".")
            ):
                return True
    return False


def example_inputs(calibration: Any) -> list:
    """Materialize a calibration iterable (so that it can be read more than once)."""
    if calibration is None:
        return None
    if isinstance(calibration, torch.Tensor):
        raise TypeError(
            "calibration must be an iterable of example inputs (e.g. a list of batches or a DataLoader), "
            "not a single tensor; wrap it in a list"
        )
    try:
        batches = list(calibration)
    except TypeError:
        raise TypeError(
            f"calibration must be an iterable of example inputs, got {type(calibration).__name__}"
        ) from None
    if not batches:
        raise ValueError("calibration is empty: give at least one example input")
    return batches


def run_model(model: nn.Module, item: Any) -> Any:
    """Call ``model`` on one example: a tensor, an ``(input, target, ...)`` tuple or list
    (from a DataLoader; the first element is the input), or a dict of keyword arguments."""
    if isinstance(item, torch.Tensor):
        return model(item)
    if isinstance(item, tuple | list) and item:
        return model(item[0])
    if isinstance(item, dict):
        return model(**item)
    raise TypeError(
        f"an example input must be a tensor, an (input, target) pair or a dict, got {type(item).__name__}"
    )


class eval_mode:
    """Put ``model`` in eval mode (and no_grad) and restore every module's mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.grad.__exit__(*exc)
        for module, mode in self.modes:
            module.training = mode


def _model_input(model: nn.Module, input_size: tuple[int, ...]) -> torch.Tensor:
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else None
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(input_size, device=device, dtype=dtype)


def _probe_positions(model: nn.Module, convs: list[nn.Module], example: Any) -> dict[int, int]:
    """Output positions per sample of each conv (summed over its calls) on one example."""
    positions: dict[int, int] = {id(conv): 0 for conv in convs}

    def hook(module, inputs, output):
        positions[id(module)] += _walk.prod(output.shape[2:]) if output.dim() > 2 else 1

    handles = [conv.register_forward_hook(hook) for conv in convs]
    try:
        with eval_mode(model):
            run_model(model, example)
    except Exception as error:
        shape = (
            tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        )
        raise ValueError(
            f"running the model on the example input {shape} failed: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    return positions


def _eligibility(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot become separable, or None."""
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        return "lazy conv not initialized yet (run the model once first)"
    if conv.groups == conv.in_channels and conv.groups > 1:
        return "already depthwise (groups == in_channels)"
    if _walk.prod(conv.kernel_size) == 1:
        return "1x1 kernel (already pointwise)"
    if type(conv) not in _walk.DENSE_TYPES and type(conv) not in _walk.PADDED_TYPES:
        return f"{type(conv).__name__} subclasses nn.Conv{conv.weight.dim() - 2}d with its own behaviour"
    return None


def plan_separable(
    model: nn.Module,
    *,
    rank: int | None = None,
    energy: float | None = None,
    budget: float | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    calibration: Iterable[Any] | None = None,
    input_size: tuple[int, ...] | None = None,
    skip_costlier: bool | None = None,
    ridge: float = 1e-3,
) -> Plan:
    """Decide, for each convolution of ``model``, its depthwise-separable form and rank.

    Args:
        model: any ``nn.Module``; nested modules, ``Sequential``, ``ModuleList``/``ModuleDict``
            and shared modules (one instance under several names) are all handled.
        rank: the depth multiplier ``R`` of every converted layer (clamped to the layer's
            exact rank ``min(out_channels/groups, prod(kernel))``).
        energy: per layer, the smallest ``R`` that keeps this share (0..1] of the squared
            singular values of all its input channels.
        budget: target share (0..1] of the MACs of all the model's convolutions; ranks are
            spread over layers greedily by weight error added per MAC saved. Needs
            ``input_size`` or ``calibration``, since MACs depend on each layer's input size.
        include, exclude: layer names or glob patterns (``"features.*"``; a name also matches
            its submodules) to restrict the conversion.
        calibration: an iterable of example inputs (tensors, ``(input, target)`` pairs or
            dicts of keyword arguments). It sizes the MACs, and :func:`to_separable` refits
            every pointwise stage on it by least squares.
        input_size: shape of one model input, batch included (e.g. ``(1, 3, 32, 32)``), to
            count MACs per sample; without it (and without calibration) MACs are per output
            position of each layer.
        skip_costlier: leave a layer dense when its separable form costs at least as many
            MACs. Default: True with rank/energy/budget, False for the exact conversion
            (whose depth multiplier ``min(O, prod(K))`` always costs more than the dense conv).
        ridge: relative ridge of the calibration refit (0 for plain least squares).

    With none of rank, energy and budget the plan is exact: outputs are unchanged up to
    rounding. Raises ValueError for conflicting options and for NaN/Inf weights.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mode = check_options(rank, energy, budget)
    if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not ridge >= 0:
        raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")
    includes, excludes = _patterns(include, "include"), _patterns(exclude, "exclude")
    if skip_costlier is None:
        skip_costlier = mode != "exact"
    batches = example_inputs(calibration)
    input_size = _check_input_size(input_size)
    if budget is not None and batches is None and input_size is None:
        # Without an input a budget would weigh a 7x7 layer on a 224x224 map the same as
        # one on a 7x7 map: MACs per output position say nothing about the model's cost.
        raise ValueError(
            f"budget={budget!r} needs input_size (e.g. (1, 3, 224, 224)) or calibration, to count each "
            "layer's MACs on the model's input"
        )

    sites = [site for site in _walk.walk(model) if isinstance(site.module, CONV_TYPES)]
    layers: list[LayerPlan] = []
    for site in sites:
        conv = site.module
        reason = _eligibility(conv)
        layer = LayerPlan(
            name=site.name,
            aliases=list(dict.fromkeys(site.names)),
            kind=type(conv).__name__,
            geometry=_walk.geometry_text(conv),
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size),
            groups=conv.groups,
            has_bias=conv.bias is not None,
            eligible=reason is None,
            skipped=reason,
            _module=conv,
        )
        if reason is None:
            if includes is not None and not _matches(layer.aliases, includes):
                layer.skipped = "not included"
            elif excludes is not None and _matches(layer.aliases, excludes):
                layer.skipped = "excluded"
            else:
                _walk.check_finite(conv, site.name)
        layers.append(layer)

    example = batches[0] if batches is not None else None
    if example is None and input_size is not None:
        example = _model_input(model, input_size)
    if example is not None and sites:
        positions = _probe_positions(model, [site.module for site in sites], example)
        for layer, site in zip(layers, sites):
            layer.positions = positions[id(site.module)]
        if input_size is None:
            first = (
                example
                if isinstance(example, torch.Tensor)
                else (example[0] if isinstance(example, tuple | list) else None)
            )
            input_size = (
                (1, *first.shape[1:])
                if isinstance(first, torch.Tensor) and first.dim() > 1
                else ("example",)
            )
    per_sample = example is not None

    notes: list[str] = []
    candidates = [layer for layer in layers if layer.eligible and layer.skipped is None]
    if not any(layer.eligible for layer in layers):
        notes.append(
            "no eligible convolution (a dense nn.Conv1d/2d/3d with a kernel larger than 1): nothing to convert"
        )
    elif not candidates:
        notes.append("include/exclude left no convolution to convert")

    if mode == "exact":
        for layer in candidates:
            layer._rank = layer.max_rank
    elif rank is not None:
        for layer in candidates:
            layer._rank = min(rank, layer.max_rank)
    elif energy is not None:
        for layer in candidates:
            layer._rank = rank_for_energy(layer.factors, float(energy))
    else:
        _allocate_budget(layers, candidates, float(budget), notes)
    if skip_costlier:
        for layer in candidates:
            if layer.converted and layer.separable_cost(layer._rank) >= layer.dense_cost:
                ratio = layer.separable_cost(layer._rank) / layer.dense_cost
                layer.skipped = (
                    f"rank-{layer._rank} separable form costs {ratio:.2f}x the dense MACs"
                )
    if per_sample and any(layer.eligible and layer.positions == 0 for layer in layers):
        notes.append("some convolutions did not run on the example input; they count 0 MACs")
    return Plan(
        layers,
        mode=mode,
        calibration=batches,
        ridge=float(ridge),
        input_size=input_size if per_sample else None,
        notes=notes,
    )


def _check_input_size(input_size: Any) -> tuple[int, ...] | None:
    if input_size is None:
        return None
    if isinstance(input_size, torch.Size):
        input_size = tuple(input_size)
    if (
        not isinstance(input_size, tuple | list)
        or not input_size
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_size)
    ):
        raise ValueError(
            f"input_size must be a tuple of positive ints such as (1, 3, 32, 32), got {input_size!r}"
        )
    return tuple(input_size)


def _allocate_budget(
    layers: list[LayerPlan], candidates: list[LayerPlan], budget: float, notes: list[str]
) -> None:
    """Greedy ranks: start dense, then repeatedly take the cheaper form of any layer that adds the
    least relative squared weight error per MAC saved, until the MACs fit ``budget``."""
    total = sum(layer.macs_before for layer in layers)
    target = budget * total
    fixed = total - sum(layer.macs_before for layer in candidates)
    state: dict[int, int | None] = {}  # rank per candidate, None = dense
    lost: dict[int, list[float]] = {}
    for i, layer in enumerate(candidates):
        lost[i] = [float(v) for v in layer.factors.lost_energy()]
        exact_cost = layer.separable_cost(layer.max_rank)
        state[i] = layer.max_rank if exact_cost < layer.dense_cost else None

    def cost(i: int, rank: int | None) -> int:
        layer = candidates[i]
        per = layer.dense_cost if rank is None else layer.separable_cost(rank)
        return per * layer.positions

    def error(i: int, rank: int | None) -> float:
        return 0.0 if rank is None else lost[i][rank]

    current = fixed + sum(cost(i, state[i]) for i in state)
    while current > target:
        best: tuple[float, int, int, int] | None = None  # (score, -saving, layer, rank)
        for i, layer in enumerate(candidates):
            now_cost, now_err = cost(i, state[i]), error(i, state[i])
            top = layer.max_rank if state[i] is None else state[i] - 1
            for rank in range(top, 0, -1):
                saving = now_cost - cost(i, rank)
                if saving <= 0 or (
                    state[i] is None and layer.separable_cost(rank) >= layer.dense_cost
                ):
                    continue
                score = (error(i, rank) - now_err) / saving
                key = (score, -saving, i, rank)
                if best is None or key < best:
                    best = key
        if best is None:
            break
        _, neg_saving, i, rank = best
        state[i] = rank
        current += neg_saving
    # Fill up: spend what the last steps left under the target on the best rank increases.
    while True:
        best_up: tuple[float, int, int, int] | None = None  # (-gain per MAC, extra, layer, rank)
        for i, layer in enumerate(candidates):
            if state[i] is None or state[i] >= layer.max_rank:
                continue
            for rank in range(state[i] + 1, layer.max_rank + 1):
                extra = cost(i, rank) - cost(i, state[i])
                if current + extra > target or layer.separable_cost(rank) >= layer.dense_cost:
                    break
                gain = error(i, state[i]) - error(i, rank)
                if gain <= 0 or extra <= 0:
                    continue
                key = (-gain / extra, extra, i, rank)
                if best_up is None or key < best_up:
                    best_up = key
        if best_up is None:
            break
        _, extra, i, rank = best_up
        state[i] = rank
        current += extra
    if current > target + 1e-9 * max(total, 1):
        share = current / total if total else 1.0
        notes.append(
            f"budget {budget:g} not reachable: the cheapest plan keeps {share:.3f} of the conv MACs"
        )
    for i, layer in enumerate(candidates):
        if state[i] is None:
            cheaper = layer.separable_cost(1) < layer.dense_cost
            layer.skipped = (
                "kept dense by the budget allocation"
                if cheaper
                else "no separable rank is cheaper than dense"
            )
        else:
            layer._rank = state[i]
