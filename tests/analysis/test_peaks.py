"""machine_peaks: measured once, cached on disk (atomically), refreshed on request."""

from __future__ import annotations

import json

import pytest
import torch

from sepconv.analysis import peaks as peaks_module
from sepconv.analysis.peaks import Peaks, machine_peaks, resolve_dtype


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path))
    return tmp_path / "peaks.json"


def test_measures_then_reads_the_cache(cache, monkeypatch):
    measured = machine_peaks(torch.float32, threads=1)
    assert 1e8 < measured.gemm_flops < 1e15 and 1e8 < measured.copy_bandwidth < 1e13
    assert (measured.dtype, measured.threads, measured.torch_version) == (
        "float32",
        1,
        torch.__version__,
    )
    assert measured.ridge == pytest.approx(measured.compute_flops / measured.copy_bandwidth)
    assert measured.compute_flops == max(measured.gemm_flops, measured.conv_flops) > 0
    assert measured.bound_seconds(1e9, 0) == pytest.approx(1e9 / measured.compute_flops)
    stored = json.loads(cache.read_text())["peaks"]
    assert [entry["gemm_flops"] for entry in stored.values()] == [measured.gemm_flops]

    def fail(*args, **kwargs):
        raise AssertionError("measured although cached")

    monkeypatch.setattr(peaks_module, "measure_peaks", fail)
    peaks_module._memo.clear()  # a new process would read the file
    assert machine_peaks("fp32", threads=1) == measured


def test_refresh_and_keys(cache, monkeypatch):
    calls = []

    def fake(dtype, threads):
        calls.append((dtype, threads))
        return Peaks(
            float(len(calls)),
            2.0,
            str(dtype).removeprefix("torch."),
            threads,
            "cpu",
            torch.__version__,
        )

    monkeypatch.setattr(peaks_module, "measure_peaks", fake)
    first = machine_peaks(torch.float64, threads=1)
    assert machine_peaks(torch.float64, threads=1) is first
    assert machine_peaks(torch.float64, threads=2).gemm_flops == 2.0  # another key
    assert machine_peaks(torch.float64, threads=1, refresh=True).gemm_flops == 3.0
    assert len(json.loads(cache.read_text())["peaks"]) == 2
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_cache_is_measured_again(cache, monkeypatch):
    cache.write_text("{not json")
    monkeypatch.setattr(
        peaks_module,
        "measure_peaks",
        lambda dtype, threads: Peaks(5.0, 1.0, "float32", threads, "cpu", torch.__version__),
    )
    assert machine_peaks(threads=3).gemm_flops == 5.0
    assert json.loads(cache.read_text())["format"] == peaks_module._FORMAT


def test_dtypes():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float64) is torch.float64
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="floating dtype"):
        resolve_dtype(torch.int32)
    with pytest.raises(ValueError, match="threads"):
        machine_peaks(threads=0)
