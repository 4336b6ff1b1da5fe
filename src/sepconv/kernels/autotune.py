"""Measured choice between the C++ kernels and PyTorch, for ``SEPCONV_KERNELS=auto``.

Which path is faster depends on the CPU (MKL and oneDNN pick different code on Intel and
AMD), the thread count, the layout and the shape; fixed thresholds tuned on one machine
are wrong on the next (docs/performance.md). So the first inference call of each problem
(input shape, strides, dtype, weights' shapes, stride, dilation, padding, threads) runs
both paths a few times, interleaved, and the faster one is used for every later call of
that problem in the process, as ``torch.backends.cudnn.benchmark`` does on GPUs. Both paths
compute the same convolution, so the choice changes speed, never the result beyond
rounding. The candidates are the kernel, PyTorch, and, for NCHW 2d inputs, PyTorch on a
channels_last copy of the input (oneDNN's channels_last depthwise kernels are often several
times faster than its NCHW ones; the output is converted back, so callers still get the
layout PyTorch would give them).

Calls that record autograd history are not measured here (their backward differs too):
:mod:`sepconv.kernels.dispatch` decides those by a rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

#: Interleaved rounds per candidate (each round one timed sample per candidate). On the
#: shared 2-core development VMs single samples vary by 30-50 %, and 3 rounds still picked
#: the slower path now and then.
ROUNDS = 5
#: Rounds, where some candidate's samples differ by more than ``DISTURBED_SPREAD`` (its
#: slowest over its fastest): the machine was busy during the measurement, and another
#: candidate may not have had one undisturbed round yet, with nothing in its own samples to
#: show it. (In ``make bench``, right after ONNX Runtime, whose threads spin for tens of
#: milliseconds, the first samples of every candidate were up to 3-4x too slow: 1x960x7x7 ->
#: 320 kernel 1.27-1.6 ms against 0.42, PyTorch 2.4 against 0.62; and ``auto`` kept
#: PyTorch's 0.64-0.76 ms paths over the kernel's 0.39-0.46 ms in three runs.)
MAX_ROUNDS = 12
DISTURBED_SPREAD = 1.5
#: A sample repeats short calls until it lasts about this long (seconds), so that timer
#: resolution and one-off interruptions weigh less. (With 1 ms, calls of about 1 ms were
#: timed one at a time, 1.3-1.8 ms each for a kernel that then ran at 0.95 ms, and ``auto``
#: kept PyTorch's 1.04 ms path for 8x144x56x56 -> 32 stride 2 channels_last run after run.
#: With 3 ms, on 1x192x28x28 -> 768 7x7, whose kernel takes 1.6 ms in a loop, a sample was
#: one call after the warm-up. That call took about 1.8 ms, while PyTorch's NCHW path took
#: 1.8 ms against its 1.9-2.1 in a loop. So ``auto`` chose PyTorch in 4 of 14 fresh runs of
#: the benchmark's row; with 5 ms, in 0 of 14, with 8 ms in 1 of 14 (run AI). The cost: the
#: first call of `mobilenet_v2` at batch 1 took 1.01 s instead of 0.63.)
SAMPLE_SECONDS = 5e-3
#: Calls slower than this (seconds) get 2 rounds: the choice matters less than the time
#: spent choosing.
SLOW_CALL_SECONDS = 0.05


def _seconds(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def fastest(candidates: dict[str, Callable[[], object]]) -> str:
    """The name of the fastest of ``candidates`` here, measured.

    Each candidate is called once untimed (first-call costs: output pools, oneDNN primitive
    caches, lazy initialisation) and, unless slow, once more to estimate its time, then
    timed in ``ROUNDS`` interleaved rounds, or up to ``MAX_ROUNDS`` while the samples show a
    disturbed machine; the minimum of each is compared, since interruptions by other
    processes only ever add time. Ties go to the first candidate.

    Unless slow, each sample follows one untimed call of its own candidate, so that what is
    compared is each path's time in a loop, as ``make bench`` measures it. A call right
    after another candidate's pays for what that one left behind (its own operands evicted,
    its output's lines to fetch again), and not equally: on 1x192x28x28 -> 768 7x7 the
    kernel took 1.60 ms in a loop and 2.3-2.9 ms right after PyTorch's call, PyTorch 0.5-0.7
    ms more after a cache sweep; with each sample a single call after the others', ``auto``
    kept PyTorch's NCHW path (2.65 ms in a loop) in 8 of 12 tries (docs/performance.md, run
    AI). Inside a network a layer runs with colder caches than in a loop; which path is
    faster there was not measured.
    """
    with torch.no_grad():
        estimate = {name: _seconds(fn, 1) for name, fn in candidates.items()}
        slow = max(estimate.values()) > SLOW_CALL_SECONDS
        rounds = 2 if slow else ROUNDS
        if not slow:  # (the first call's time includes its one-off costs)
            estimate = {name: _seconds(fn, 1) for name, fn in candidates.items()}
        reps = {
            name: min(50, max(1, int(SAMPLE_SECONDS / max(t, 1e-7))))
            for name, t in estimate.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        done = 0
        while done < rounds or (not slow and done < MAX_ROUNDS and _disturbed(samples)):
            for name, fn in candidates.items():
                if not slow:
                    fn()  # (untimed: the timed calls follow their own candidate's, see above)
                samples[name].append(_seconds(fn, reps[name]))
            done += 1
    best = {name: min(values) for name, values in samples.items()}
    return min(best, key=lambda name: best[name])


def _disturbed(samples: dict[str, list[float]]) -> bool:
    """Whether some candidate's samples spread by more than ``DISTURBED_SPREAD``."""
    return any(max(v) > DISTURBED_SPREAD * min(v) for v in samples.values() if v)
