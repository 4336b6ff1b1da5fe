"""Loading a model named on the command line, safely.

``MODEL`` is one of:

- ``package.module:factory`` — import the module and call ``factory()``;
- ``path/to/file.py:factory`` — run that file as a module and call ``factory()``;
- ``path/to/saved.pt`` — a file written by ``torch.save``. A state dict (or a dict with
  a ``"model"`` factory spec and ``"state_dict"``) loads with ``weights_only=True``; a whole
  pickled module only with ``trust=True`` (unpickling can run arbitrary code).

A factory may also be given with ``--weights FILE`` to load a state dict into it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

from sepconv.cli import CLIError


def load_model(spec: str, *, trust: bool = False, weights: str | None = None) -> nn.Module:
    """Build or load the model that ``spec`` names (see module doc); raises CLIError on failure."""
    if ":" in spec and not Path(spec).exists():
        model = _from_factory(spec)
    else:
        model = _from_file(spec, trust=trust)
    if weights is not None:
        state = _torch_load(weights, trust=False)
        if not isinstance(state, dict):
            raise CLIError(f"{weights} does not hold a state dict")
        _load_weights(model, state, weights)
    return model


def _load_weights(model: nn.Module, state: dict, weights: str) -> None:
    """``load_state_dict`` with a one-line error that names the keys that do not fit."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches; torch's first line only names the model
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:] if line.strip())
        raise CLIError(f"{weights} does not fit the model: {_shorten(details)}") from None
    problems = [
        f"{label} {_shorten(', '.join(keys))}"
        for label, keys in (
            ("missing keys", result.missing_keys),
            ("unexpected keys", result.unexpected_keys),
        )
        if keys
    ]
    if problems:
        raise CLIError(f"{weights} does not fit the model: {'; '.join(problems)}")


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_factory(spec: str) -> nn.Module:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise CLIError(f"model spec {spec!r} must be 'package.module:factory' or 'file.py:factory'")
    module = _import_file(target) if target.endswith(".py") else _import_module(target)
    factory = getattr(module, attr, None)
    if factory is None:
        raise CLIError(f"{target} has no attribute {attr!r}")
    try:
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except Exception as error:  # a user's factory can fail in any way
        raise CLIError(f"{spec}() failed: {type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise CLIError(f"{spec} gave a {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise CLIError(f"cannot import {name!r}: {error}") from None


def _import_file(path: str):
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"no such file: {path}")
    name = f"_sepconv_user_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise CLIError(f"running {path} failed: {type(error).__name__}: {error}") from None
    return module


def _torch_load(path: str, *, trust: bool):
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"no such file: {path}")
    if not _looks_like_torch_file(file):
        raise CLIError(
            f"{path} is not a PyTorch file (torch.save writes a zip archive or a pickle)"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        if not trust:
            raise CLIError(
                f"{path} is not a plain state dict; it holds pickled objects, which load only with "
                f"--trust (unpickling can run code from the file)"
            ) from None
        raise CLIError(f"{path} is not a PyTorch file: {error}") from None
    except Exception as error:
        raise CLIError(
            f"{path} is not a PyTorch file: {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from None


def _looks_like_torch_file(file: Path) -> bool:
    """``torch.save`` writes a zip archive (``PK``) or, in the legacy format, a pickle (``0x80``)."""
    with open(file, "rb") as handle:
        head = handle.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def _from_file(path: str, *, trust: bool) -> nn.Module:
    obj = _torch_load(path, trust=trust)
    if isinstance(obj, nn.Module):
        return obj
    if (
        isinstance(obj, dict)
        and isinstance(obj.get("model"), str)
        and isinstance(obj.get("state_dict"), dict)
    ):
        model = _from_factory(obj["model"])
        model.load_state_dict(obj["state_dict"])
        return model
    if isinstance(obj, dict):
        raise CLIError(
            f"{path} holds a bare state dict; name the model that it belongs to as "
            f"'package.module:factory --weights {path}'"
        )
    raise CLIError(f"{path} holds a {type(obj).__name__}, not a model")
