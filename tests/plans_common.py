"""What the tests of replayed plans (``sepconv.layers.plans``) share: counting replays, a
call that asks everything afresh, and changes made after a plan was recorded (each
``change(module, seen)`` returns a function that undoes it, or None)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules import module as torch_module

from sepconv.layers import plans


def afresh(module: nn.Module, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    """``module(x)`` without autograd, every check asked again (no plan replayed)."""
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(plans, "lookup", lambda *args: None)
        return module(x)


def close_to(out: torch.Tensor, reference: torch.Tensor) -> None:
    """``out`` equals the modules' own ``reference`` within float32 rounding: 1e-4 of its
    largest magnitude (at least 1)."""
    scale = max(1.0, reference.abs().max().item())
    assert (out - reference).abs().max().item() <= 1e-4 * scale


def count_replays(monkeypatch) -> list[int]:
    """A one-element list counting the plans replayed from now on."""
    calls = [0]
    original = plans.Plan.run

    def counted(self, x):
        calls[0] += 1
        return original(self, x)

    monkeypatch.setattr(plans.Plan, "run", counted)
    return calls


def global_hook(module, seen):
    handle = torch_module.register_module_forward_hook(lambda m, i, o: seen.append(1))
    return handle.remove


def one_thread(module, seen):
    count = torch.get_num_threads()
    torch.set_num_threads(1)
    return lambda: torch.set_num_threads(count)


def kernels_off(module, seen, monkeypatch):
    monkeypatch.setenv("SEPCONV_KERNELS", "off")


@contextlib.contextmanager
def changed(
    changes: list[Callable], module: nn.Module, seen: list[int], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """``changes`` applied to ``module`` inside the block, undone after it."""
    undo = [
        change(module, seen, monkeypatch) if change is kernels_off else change(module, seen)
        for change in changes
    ]
    try:
        yield
    finally:
        for done in undo:
            if done is not None:
                done()


def change_tests(check: Callable[[list, bool, int], None], changes: list[Callable]) -> tuple:
    """The two tests of a module's ``changes``, ``check(changes, channels_last, seed)``
    asserting that a call after them computes what the changed module computes: each change
    alone, and hypothesis combinations of up to three. Assign them to ``test_`` names."""

    @pytest.mark.parametrize("change", changes, ids=lambda f: f.__name__.strip("_"))
    def test_each_change_is_seen(change, kernels_built):
        check([change], False, 0)

    @settings(max_examples=25, deadline=None)
    @given(
        chosen=st.lists(st.sampled_from(changes), min_size=1, max_size=3, unique=True),
        channels_last=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def test_changes_after_the_first_call_are_seen(chosen, channels_last, seed, kernels_built):
        check(chosen, channels_last, seed)

    return test_each_change_is_seen, test_changes_after_the_first_call_are_seen
