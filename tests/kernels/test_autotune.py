"""``auto`` measures kernel against PyTorch on a problem's first inference call."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from sepconv import DepthwiseConv2d, SeparableConv2d
from sepconv.kernels import autotune, dispatch
from tests.kernels.helpers import env


def _sleeper(seconds: float):
    def run():
        time.sleep(seconds)

    return run


def _noop():
    return None


def test_fastest_picks_the_fastest_candidate():
    assert autotune.fastest({"a": _noop, "b": _sleeper(0.002)}) == "a"
    assert autotune.fastest({"a": _sleeper(0.002), "b": _noop, "c": _sleeper(0.001)}) == "b"


def test_candidates_are_timed_after_their_own_call(monkeypatch):
    """A path slowed by what another left behind (its operands evicted) is judged by its time
    in a loop: ``a`` takes 3 ms right after another candidate and 1 ms after itself, ``b``
    and ``c`` always 2 ms. Timed right after another candidate's call, ``a`` would lose.
    On a clock that only the candidates advance, so that a busy machine cannot change it."""
    clock, last = [0.0], [None]

    def candidate(name, own, other):
        def run():
            clock[0] += own if last[0] == name else other
            last[0] = name

        return run

    monkeypatch.setattr(autotune, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    candidates = {"b": candidate("b", 2e-3, 2e-3), "a": candidate("a", 1e-3, 3e-3)}
    candidates["c"] = candidate("c", 2e-3, 2e-3)
    assert autotune.fastest(candidates) == "a"


def test_slow_calls_are_timed_twice(monkeypatch):
    calls = {"kernel": 0, "pytorch": 0}

    def counted(name, seconds):
        def run():
            calls[name] += 1
            time.sleep(seconds)

        return run

    monkeypatch.setattr(autotune, "SLOW_CALL_SECONDS", 0.001)
    monkeypatch.setattr(autotune, "SAMPLE_SECONDS", 0.001)  # (as slow calls outlast a sample)
    winner = autotune.fastest(
        {"kernel": counted("kernel", 0.002), "pytorch": counted("pytorch", 0.003)}
    )
    assert winner == "kernel"
    assert calls == {"kernel": 3, "pytorch": 3}  # one untimed, two timed each


def test_call_time_is_estimated_after_the_first_call(monkeypatch):
    """A first call's one-off costs (here 20 ms) do not make the samples single calls: the
    repetitions per sample come from a second call (here 10 us). Times are scripted, so a
    busy machine cannot change the count."""
    real = autotune._seconds
    scripted = iter([0.02, 1e-5])  # the first call, then the second; then real times

    def seconds(fn, reps):
        measured = real(fn, reps)
        return next(scripted, measured)

    monkeypatch.setattr(autotune, "_seconds", seconds)
    monkeypatch.setattr(autotune, "MAX_ROUNDS", autotune.ROUNDS)  # (no extra rounds)
    calls = []
    autotune.fastest({"only": lambda: calls.append(1)})
    assert len(calls) == 2 + autotune.ROUNDS * 51  # two untimed, then 1 + 50 per sample


def _scripted(monkeypatch, times: dict[str, list[float]]):
    """Candidates whose timings (seconds, the two estimates first) come from ``times``;
    returns the candidates and the number of timings each used."""
    runs = {name: iter(values) for name, values in times.items()}
    used = dict.fromkeys(times, 0)
    candidates = {name: (lambda name=name: name) for name in times}

    def seconds(fn, reps):
        name = fn()
        used[name] += 1
        return next(runs[name])

    monkeypatch.setattr(autotune, "_seconds", seconds)
    return candidates, used


def test_disturbed_samples_get_more_rounds(monkeypatch):
    """The kernel's first five samples all disturbed (3x), PyTorch's not all: five rounds
    alone keep PyTorch's slower path; with PyTorch's spread showing the disturbance, the
    rounds go on to MAX_ROUNDS and find the kernel's undisturbed time."""
    kernel = [4e-4, 4e-4] + [1.3e-3] * 5 + [4e-4] * 20
    pytorch = [6e-4, 6e-4, 2.4e-3, 6.2e-4] + [6.2e-4] * 20
    candidates, used = _scripted(monkeypatch, {"kernel": kernel, "pytorch": pytorch})
    assert autotune.fastest(candidates) == "kernel"
    assert used["kernel"] == 2 + autotune.MAX_ROUNDS
    monkeypatch.setattr(autotune, "MAX_ROUNDS", autotune.ROUNDS)
    candidates, _ = _scripted(monkeypatch, {"kernel": kernel, "pytorch": pytorch})
    assert autotune.fastest(candidates) == "pytorch"


def test_extra_rounds_stop_at_max_rounds(monkeypatch):
    noisy = [1e-3, 1e-3] + [1e-3, 2e-3] * 20  # always disturbed
    quiet = [1e-3] * 42
    candidates, used = _scripted(monkeypatch, {"a": noisy, "b": quiet})
    autotune.fastest(candidates)
    assert used == {"a": 2 + autotune.MAX_ROUNDS, "b": 2 + autotune.MAX_ROUNDS}
    # (undisturbed: ROUNDS only)
    candidates, used = _scripted(monkeypatch, {"a": quiet, "b": list(quiet)})
    autotune.fastest(candidates)
    assert used == {"a": 2 + autotune.ROUNDS, "b": 2 + autotune.ROUNDS}


@pytest.fixture
def verdicts(monkeypatch):
    """Replace the measurement by a scripted verdict; record each problem it was asked about."""
    asked = []
    state = {"winner": dispatch.KERNEL}

    def fake(candidates):
        asked.append(candidates)
        return state["winner"]

    monkeypatch.setattr(autotune, "fastest", fake)
    return asked, state


WINNERS = [dispatch.KERNEL, dispatch.PYTORCH, dispatch.PYTORCH_CHANNELS_LAST]


@pytest.mark.parametrize("winner", WINNERS)
@pytest.mark.parametrize("make", ["separable", "depthwise"])
def test_auto_follows_the_measurement_once_per_problem(kernels_built, verdicts, winner, make):
    asked, state = verdicts
    state["winner"] = winner
    layer = SeparableConv2d(8, 16, 3, padding=1) if make == "separable" else DepthwiseConv2d(8, 3)
    layer.eval()
    x = torch.randn(2, 8, 20, 20)
    seen = []
    from sepconv.kernels import _ops

    raw = _ops.separable_forward_raw if make == "separable" else _ops.depthwise_forward_raw

    def counted(*args):
        seen.append(1)
        return raw(*args)

    name = "separable_forward_raw" if make == "separable" else "depthwise_forward_raw"
    with pytest.MonkeyPatch.context() as mp, env("auto"), torch.no_grad():
        mp.setattr(_ops, name, counted)
        first, second = layer(x), layer(x)
        layer(x[:1])  # another problem: measured again
        with env("off"):
            expected = layer(x)
    assert len(asked) == 2
    assert set(asked[0]) == set(WINNERS)  # NCHW input: channels_last is a candidate
    assert (len(seen) > 0) is (winner == dispatch.KERNEL)
    for out in (first, second):
        assert out.is_contiguous()  # the layout PyTorch gives an NCHW input, whatever ran
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_measured_candidates_compute_the_convolution(kernels_built, verdicts):
    """What the measurement runs is the real kernel and the real PyTorch path."""
    asked, _ = verdicts
    layer = SeparableConv2d(6, 10, 3, stride=2, padding="same").eval()
    x = torch.randn(1, 6, 17, 17)
    with env("auto"), torch.no_grad():
        layer(x)
        with env("off"):
            expected = layer(x)
    for name, run in asked[0].items():
        out = run()
        assert out.is_contiguous(), name
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_channels_last_inputs_have_two_candidates(kernels_built, verdicts):
    asked, _ = verdicts
    layer = SeparableConv2d(6, 10, 3, padding=1).eval()
    x = torch.randn(1, 6, 9, 9).contiguous(memory_format=torch.channels_last)
    with env("auto"), torch.no_grad():
        out = layer(x)
    assert set(asked[0]) == {dispatch.KERNEL, dispatch.PYTORCH}
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_training_calls_use_the_rule_not_the_measurement(kernels_built, verdicts):
    asked, _ = verdicts
    layer = SeparableConv2d(8, 16, 3, padding=1)
    with env("auto"):
        layer(torch.randn(2, 8, 40, 40)).sum().backward()
    assert asked == []


def test_on_and_off_never_measure(kernels_built, verdicts):
    asked, _ = verdicts
    layer = SeparableConv2d(8, 16, 3, padding=1).eval()
    with torch.no_grad():
        for value in ("on", "off"):
            with env(value):
                layer(torch.randn(1, 8, 12, 12))
    assert asked == []
    assert len(dispatch._calls) == 1  # "on" planned the problem; "off" never looks
