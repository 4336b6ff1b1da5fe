"""Programs (``sepconv.kernels.programs``): runs of a replayed plan's kernel calls as one
library call each. Their output is the Python replay's, bit for bit (the same kernels on the
same pointers), and the modules' own within float32 rounding; the arena never lets two
values that are alive together share bytes; steps after a module step that changes what it
returns run as modules."""

from __future__ import annotations

import concurrent.futures
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepconv.blocks import ConvNormAct, DepthwiseSeparableBlock, InvertedResidual
from sepconv.blocks.fused import run_sequential
from sepconv.kernels import _build, _ops, dispatch, programs
from sepconv.layers import plans
from sepconv.models import mobilenet_v2_small
from tests.blocks.test_fused import _module_by_module, _randomise_norms
from tests.plans_common import close_to


def _library_calls(monkeypatch) -> dict[str, int]:
    """Calls of the library's forward entries from now on, by name."""
    lib = _build.load()
    calls: dict[str, int] = {}

    class Counting:
        def __getattr__(self, name):
            entry = getattr(lib, name)
            if not name.endswith(("_forward", "_program")):
                return entry

            def counted(*args):
                calls[name] = calls.get(name, 0) + 1
                return entry(*args)

            return counted

    monkeypatch.setattr(_build, "_lib", Counting())
    return calls


def _forget_plans(seq: nn.Module) -> None:
    for module in seq.modules():
        if plans.plan_of(module) is not None:
            plans._slot_of(module).plan = None


def _replayed_without_programs(seq: nn.Module, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    """``seq``'s output from its plans replayed in Python (recorded afresh, the blocks' too)."""
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setenv("SEPCONV_KERNELS_PROGRAMS", "off")
        _forget_plans(seq)
        run_sequential(seq, x)
        run_sequential(seq, x)
        out = run_sequential(seq, x)
        assert not any(
            plans.plan_of(m).compiled_programs for m in seq.modules() if plans.plan_of(m)
        )
        _forget_plans(seq)
        return out


def test_network_features_run_as_one_call(monkeypatch, kernels_on):
    torch.manual_seed(0)
    model = _randomise_norms(mobilenet_v2_small(input_size=32, width_mult=0.5)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)  # (records the plans)
        model(x)  # (the first replay compiles them into a program)
        calls = _library_calls(monkeypatch)
        out = model(x)
    assert calls.pop("sepconv_run_program") == 1
    assert calls == {"sepconv_pw_forward": 1}  # (the classifier's own plan: a module step)
    assert len(plans.plan_of(model.features).compiled_programs) == 1
    close_to(out, _module_by_module(model, x))


def _sequence(spec: list[tuple], c0: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [ConvNormAct(3, c0, 3, 2, act_layer="relu6")]
    c = c0
    for kind, out, stride, kernel, expand in spec:
        if kind == "v2":
            layers.append(InvertedResidual(c, out, stride, expand, kernel))
        else:
            layers.append(DepthwiseSeparableBlock(c, out, kernel, stride, residual=c == out))
        c = out
    layers.append(ConvNormAct(c, 2 * c, 1))
    return _randomise_norms(nn.Sequential(*layers), seed).eval()


_BLOCK = st.tuples(
    st.sampled_from(["v1", "v2"]),
    st.sampled_from([8, 12, 16]),
    st.sampled_from([1, 1, 2]),
    st.sampled_from([3, 5]),
    st.sampled_from([1, 2, 6]),
)


@settings(max_examples=80, deadline=None)
@given(
    spec=st.lists(_BLOCK, min_size=1, max_size=5),
    c0=st.sampled_from([8, 16]),
    batch=st.integers(1, 3),
    size=st.integers(9, 20),
    channels_last=st.booleans(),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_program_equals_python_replay(
    spec, c0, batch, size, channels_last, threads, seed, kernels_built
):
    seq = _sequence(spec, c0, seed)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    if channels_last:
        seq = seq.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    count = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as monkeypatch, torch.no_grad():
        monkeypatch.setenv("SEPCONV_KERNELS", "on")
        torch.set_num_threads(threads)
        try:
            run_sequential(seq, x)  # (records)
            first = run_sequential(seq, x)
            assert len(plans.plan_of(seq).compiled_programs) == 1
            second = run_sequential(seq, x)
            expected = _replayed_without_programs(seq, x, monkeypatch)
        finally:
            torch.set_num_threads(count)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert first.data_ptr() != second.data_ptr()  # (each call's output is its own)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert first.is_contiguous(memory_format=layout)
    assert torch.equal(x, before)
    close_to(first, _module_by_module(seq, x))


def test_weight_made_non_contiguous_in_place_is_copied(monkeypatch, kernels_on):
    seq = _sequence([("v2", 16, 1, 3, 1)], 16, 0)  # (expand ratio 1: no expansion)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        run_sequential(seq, x)
        run_sequential(seq, x)
        (program,) = plans.plan_of(seq).compiled_programs
        square = seq[1].conv[1].weight  # the projection's (16, 16, 1, 1): the same shape
        square.transpose_(0, 1)
        out = run_sequential(seq, x)
        assert plans.plan_of(seq).compiled_programs == [program]  # (a copy is read)
        square.transpose_(0, 1)
        back = run_sequential(seq, x)
    close_to(back, _module_by_module(seq, x))
    square.data = square.data.transpose(0, 1)
    close_to(out, _module_by_module(seq, x))


def test_steps_that_do_not_lower_split_the_program(monkeypatch, kernels_on):
    """A block that runs as a module (hooked) between others: a program before it, the
    block, a program after it; the result is the Python replay's."""
    seq = _sequence([("v2", 8, 1, 3, 6), ("v1", 16, 2, 3, 1), ("v2", 16, 1, 5, 2)], 8, 0)
    seq[2].register_forward_hook(lambda m, i, o: o * 0.5)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        run_sequential(seq, x)
        run_sequential(seq, x)  # (compiles)
        calls = _library_calls(monkeypatch)
        out = run_sequential(seq, x)
    plan = plans.plan_of(seq)
    first, second = plan.compiled_programs
    assert [r for _, r in plan.runners] == [first.run, plan.steps[2], second.run]
    assert calls["sepconv_run_program"] == 2  # (the hooked block: its fused call alone)
    monkeypatch.undo()
    assert torch.equal(out, _replayed_without_programs(seq, x, monkeypatch))
    close_to(out, _module_by_module(seq, x))


def test_block_lowered_in_part_adds_nothing(monkeypatch, kernels_on):
    """A block whose plan lowers up to a step that does not (here its fused call, its
    lowering taken away) stays a Python step, and the program before it ends before it."""
    monkeypatch.setitem(programs._LOWERINGS, dispatch._raw_separable_stages, lambda *a: None)
    seq = _sequence([("v2", 8, 1, 3, 6)], 8, 0)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        run_sequential(seq, x)
        run_sequential(seq, x)
        out = run_sequential(seq, x)
    plan = plans.plan_of(seq)
    first, second = plan.compiled_programs
    assert [r for _, r in plan.runners] == [first.run, plan.steps[1], second.run]
    assert first.kinds == [programs.OP_DENSE] and second.kinds == [programs.OP_POINTWISE]
    close_to(out, _module_by_module(seq, x))


class _Flipping(nn.Module):
    """Hands its input on, on every other call channels_last (or one column narrower)."""

    def __init__(self, narrow: bool) -> None:
        super().__init__()
        self.narrow, self.calls = narrow, 0

    def forward(self, x):
        self.calls += 1
        if self.calls % 2:
            return x
        return x[..., :-1] if self.narrow else x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("programs_on", ["on", "off"])
@pytest.mark.parametrize("narrow", [False, True])
def test_step_after_a_module_that_changes_its_output(narrow, programs_on, monkeypatch, kernels_on):
    """A module step that returns another layout or shape than when recorded: the steps after
    it, recorded for the old one, do not run (before run AL the blocks read the new layout
    with the old strides); the modules after it do, and the plan is recorded afresh."""
    monkeypatch.setenv("SEPCONV_KERNELS_PROGRAMS", programs_on)
    seq = _sequence([("v1", 8, 1, 3, 1), ("v2", 8, 1, 3, 6)], 8, 0)
    seq.insert(1, _Flipping(narrow))
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        outs = [run_sequential(seq, x) for _ in range(6)]
    for i, out in enumerate(outs):
        seq[1].calls = i  # (the reference takes the same branch)
        close_to(out, _module_by_module(seq, x))


def test_weight_data_replaced_is_read(kernels_on):
    seq = _sequence([("v1", 8, 1, 3, 1)], 8, 0)
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        run_sequential(seq, x)
        run_sequential(seq, x)
        (program,) = plans.plan_of(seq).compiled_programs
        conv = seq[-1][0]
        conv.weight.data = torch.randn_like(conv.weight)  # (another pointer, the same tables)
        out = run_sequential(seq, x)
        assert plans.plan_of(seq).compiled_programs == [program]
    close_to(out, _module_by_module(seq, x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_large_values(channels_last, monkeypatch, kernels_on):
    """Values of 1 MiB and more (their buffers wait for the window): the Python replay's
    bits."""
    seq = _sequence([("v2", 32, 1, 3, 2), ("v2", 32, 1, 3, 2), ("v1", 32, 1, 3, 1)], 32, 0)
    x = torch.randn(4, 3, 112, 112)
    if channels_last:
        seq = seq.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        run_sequential(seq, x)
        run_sequential(seq, x)
        out = run_sequential(seq, x)
    (program,) = plans.plan_of(seq).compiled_programs
    assert program.arena_bytes >= 4 * (4 * 32 * 56 * 56 * 4)  # (no buffer reused in time)
    assert torch.equal(out, _replayed_without_programs(seq, x, monkeypatch))


def test_no_program_whose_arena_outgrows_the_pool(monkeypatch, kernels_on):
    """An arena larger than a quarter of the output pool would be a fresh allocation on
    every call: those steps replay in Python."""
    seq = _sequence([("v2", 8, 1, 3, 6)], 8, 0)
    x = torch.randn(1, 3, 64, 64)  # (the arena: 256 KiB)
    monkeypatch.setattr(_ops, "_pool_limit", lambda: (1 << 20) - 64)
    with torch.no_grad():
        run_sequential(seq, x)
        run_sequential(seq, x)
    assert len(plans.plan_of(seq).compiled_programs) == 0
    monkeypatch.setattr(_ops, "_pool_limit", lambda: 1 << 20)
    plans._slot_of(seq).plan = None
    with torch.no_grad():
        run_sequential(seq, x)
        run_sequential(seq, x)
    assert len(plans.plan_of(seq).compiled_programs) == 1


def test_programs_off(monkeypatch, kernels_on):
    monkeypatch.setenv("SEPCONV_KERNELS_PROGRAMS", "off")
    seq = _sequence([("v2", 8, 2, 3, 6)], 8, 0)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        run_sequential(seq, x)
        run_sequential(seq, x)
    plan = plans.plan_of(seq)
    assert [r for _, r in plan.runners] == plan.steps and plan.compiled_programs == []


def test_library_error_raises(kernels_built):
    like = programs.meta_like((1, 4), (4, 1), torch.float32)
    builder = programs.Builder(like)
    out = builder.call(99, [builder.input, programs.OUT], like)  # (no such op)
    program = builder.finish(out)
    with pytest.raises(RuntimeError, match="error code 2"):
        program.run(torch.zeros(1, 4))


# ----------------------------------------------------------------------------- the arena


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_arena_never_shares_bytes_between_live_values(data):
    """Random programs: each op reads one or two earlier values and writes a new one (or adds
    into one in place); values alive at the same op occupy disjoint bytes, whatever sizes
    count as large and whatever the window before their buffers' reuse."""
    large = data.draw(st.sampled_from([1, 400, 10**9]), label="large bytes")
    window = data.draw(st.sampled_from([0, 1000, 10**9]), label="window")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(programs, "_LARGE", large)
        monkeypatch.setattr(programs, "_window", lambda: window)
        _check_random_arena(data)


def _check_random_arena(data) -> None:
    like = programs.meta_like((1,), (1,), torch.float32)
    builder = programs.Builder(like)
    values = [builder.input]
    for _ in range(data.draw(st.integers(1, 12), label="ops")):
        reads = data.draw(st.lists(st.sampled_from(values), min_size=1, max_size=2))
        n = data.draw(st.integers(1, 300), label="elements")
        if data.draw(st.booleans()) and reads[0] is not builder.input:
            builder.ops.append(programs._Op(programs.OP_ADD, [reads[0], *reads[1:]], None))
            continue
        out = builder.call(1, [*reads, programs.OUT], programs.meta_like((n,), (1,), torch.float32))
        values.append(out)
    output = values[-1]
    offsets, total = programs._arena(builder.ops, output)
    spans = {
        id(v): (offsets[id(v)], offsets[id(v)] + 4 * v.like.numel())
        for v in values
        if id(v) in offsets
    }
    assert all(end <= total for _, end in spans.values())
    first = {}
    last = {}
    for i, op in enumerate(builder.ops):
        for a in op.args:
            if id(a) in spans:
                first.setdefault(id(a), i)
                last[id(a)] = i
    for i in range(len(builder.ops)):
        live = [spans[v] for v in spans if first.get(v, -1) <= i <= last.get(v, -1)]
        live.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(live))
    assert id(output) not in offsets  # (the output is the caller's fresh tensor)


def test_concurrent_calls_with_copied_weights(kernels_on):
    """Two Python threads replaying a channels_last sequence (its stem weight is copied per
    call, in a table of the call's own) get the single-threaded result every time."""
    seq = _sequence([("v2", 16, 1, 3, 6), ("v1", 16, 2, 3, 1)], 16, 0)
    seq = seq.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        run_sequential(seq, x)
        expected = run_sequential(seq, x)
        assert not seq[0][0].weight.is_contiguous()
        assert len(plans.plan_of(seq).compiled_programs) == 1

    def calls() -> bool:
        with torch.no_grad():
            return all(torch.equal(run_sequential(seq, x), expected) for _ in range(20))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert all(f.result() for f in [pool.submit(calls) for _ in range(2)])


def _chain(n: int, elements: int) -> tuple[list, programs.Value]:
    builder = programs.Builder(programs.meta_like((1,), (1,), torch.float32))
    x = builder.input
    for _ in range(n):
        x = builder.call(1, [x, programs.OUT], programs.meta_like((elements,), (1,), torch.float32))
    return builder.ops, x


def test_arena_reuses_cold_buffers_only(monkeypatch):
    """A chain of 7 calls: small values take 3 buffers (not the one the step before read);
    large ones wait for the window of writes (32 MiB: 4 values of 8 MiB, so 6 buffers)."""
    monkeypatch.setattr(programs, "_window", lambda: 32 << 20)
    ops, out = _chain(7, 256)
    assert programs._arena(ops, out)[1] == 3 * 4096
    ops, out = _chain(7, 2 << 20)  # (8 MiB each: large)
    offsets, total = programs._arena(ops, out)
    assert total == 6 * (8 << 20) and len(set(offsets.values())) == 6
