"""sepconv.profile's Report: rows, totals, timings, outputs and comparisons."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from torch import nn

import sepconv
from sepconv.analysis import ProfileError, Report, profile
from tests.analysis.conftest import FAKE_PEAKS
from tests.analysis.models import dense_stack, mobilenet_stack


@pytest.fixture(scope="module")
def measured() -> Report:
    return profile(
        mobilenet_stack(),
        torch.randn(2, 3, 32, 32),
        backward=True,
        warmup=1,
        repeat=2,
        peaks=FAKE_PEAKS,
    )


def test_lazy_exports():
    assert sepconv.profile is profile
    assert sepconv.Report is Report
    assert callable(sepconv.explain)


def test_columns_sum_to_totals(measured):
    rows = measured.rows
    assert measured.total_params == sum(r.params for r in rows) == measured.model_params
    assert measured.total_macs == sum(r.macs for r in rows)
    assert measured.total_bytes == sum(r.bytes for r in rows)
    assert measured.total_bound_ms == pytest.approx(sum(r.bound_ms for r in rows))
    assert measured.total_forward_ms == pytest.approx(sum(r.forward_ms for r in rows))
    assert measured.total_backward_ms == pytest.approx(sum(r.backward_ms for r in rows))
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    assert measured.forward_ms > 0 and measured.backward_ms > 0
    assert all(r.forward_ms > 0 and r.backward_ms >= 0 for r in rows)
    assert measured.intensity == pytest.approx(2 * measured.total_macs / measured.total_bytes)


def test_rows_and_separable_attribution(measured):
    by_name = {r.name: r for r in measured.rows}
    # MobileNet-style blocks in eval mode run fused, the norm and activation between the
    # stages included: one "separable" row, its norm's work and parameters counted.
    block = by_name["3"]
    assert block.kind == "separable" and block.output_shape == (2, 32, 16, 16)
    assert not any(name in by_name for name in ("3.depthwise", "3.mid_norm", "3.mid_act"))
    stages = mobilenet_stack()[3]
    assert block.params == sum(
        p.numel()
        for m in (stages.depthwise, stages.mid_norm, stages.pointwise)
        for p in m.parameters()
    )
    assert block.macs == 2 * 16 * 16 * 16 * (9 + 1 + 32)  # depthwise, norm, pointwise
    # The Xception-style block runs fused: one "separable" row, its children are not rows.
    fused = by_name["7"]
    assert fused.kind == "separable" and fused.type == "SeparableConv2d"
    assert "7.depthwise" not in by_name and "7.pointwise" not in by_name
    layer = mobilenet_stack()[7]
    assert fused.params == sum(p.numel() for p in layer.depthwise.parameters()) + sum(
        p.numel() for p in layer.pointwise.parameters()
    )
    assert by_name["7.act"].kind == "activation"
    # Flatten does no work; it is not a row.
    assert all(r.type != "Flatten" for r in measured.rows)
    for r in measured.rows:
        assert r.bound_ms == pytest.approx(1e3 * measured.peaks.bound_seconds(2 * r.macs, r.bytes))


def test_stage_rows_where_the_stages_run_one_by_one():
    """In training mode the norm between the stages uses batch statistics: the stages run
    module by module, one row each."""
    report = profile(mobilenet_stack().train(), torch.randn(2, 3, 32, 32), measure=False)
    by_name = {r.name: r for r in report.rows}
    assert by_name["3.depthwise"].kind == "depthwise" and by_name["3.pointwise"].kind == "pointwise"
    assert by_name["3.depthwise"].output_shape == (2, 16, 16, 16)
    assert by_name["3.mid_norm"].kind == "norm" and "3" not in by_name


def test_outputs(measured, tmp_path):
    table = str(measured)
    assert "7.pointwise" not in table and "3.depthwise" not in table and "total" in table
    markdown = measured.to_markdown()
    assert markdown.count("\n| ") == len(measured.rows) + 2  # header, rows, total
    lines = list(csv.DictReader(io.StringIO(measured.to_csv())))
    assert [line["name"] for line in lines[:-1]] == [r.name for r in measured.rows]
    assert lines[-1]["name"] == "TOTAL" and int(lines[-1]["macs"]) == measured.total_macs
    data = json.loads(measured.to_json())
    assert data["totals"]["macs"] == measured.total_macs and len(data["rows"]) == len(measured.rows)
    assert data["peaks"]["gemm_flops"] == 1e11
    path = measured.plot(tmp_path / "roofline.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_count_only_uses_roofline_share(fake_peaks):
    report = profile(mobilenet_stack(), torch.randn(1, 3, 16, 16), measure=False, peaks=fake_peaks)
    assert report.forward_ms is None and all(r.forward_ms is None for r in report.rows)
    assert report.rows[0].share == pytest.approx(report.rows[0].bound_ms / report.total_bound_ms)
    assert "fwd ms" not in report.to_markdown()


def test_compare_matches_converted_layers(fake_peaks):
    dense = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
    separable = nn.Sequential(sepconv.SeparableConv2d(8, 16, 3, padding=1), nn.ReLU())
    x = torch.randn(1, 8, 12, 12)
    a = profile(dense, x, repeat=1, warmup=0, peaks=fake_peaks)
    b = profile(separable, x, repeat=1, warmup=0, peaks=fake_peaks)
    comparison = a.compare(b, names=("dense", "separable"))
    totals = {m: ratio for m, _, _, ratio in comparison.totals()}
    assert totals["MACs"] == pytest.approx(b.total_macs / a.total_macs)
    assert comparison.ratio("forward_ms") == pytest.approx(b.forward_ms / a.forward_ms)
    [(ra, rb)] = comparison.layers()
    assert (ra.name, ra.kind, rb.kind) == ("0", "conv", "separable")
    assert "separable" in comparison.to_markdown() and "Totals" in str(comparison)
    assert json.loads(comparison.to_json())["layers"][0]["macs_b"] == rb.macs
    compared_dense = profile(
        dense_stack(), torch.randn(1, 3, 16, 16), measure=False, peaks=fake_peaks
    )
    assert (
        compared_dense.total_macs
        > profile(
            mobilenet_stack(), torch.randn(1, 3, 16, 16), measure=False, peaks=fake_peaks
        ).total_macs
    )


def test_failing_model_names_layer_and_shape():
    with pytest.raises(
        ProfileError, match=r"layer '1' \(Conv2d\) failed on input of shape 1x4x8x8"
    ):
        profile(
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3)),
            torch.randn(1, 3, 8, 8),
            measure=False,
            peaks=False,
        )
    with pytest.raises(ProfileError, match=r"layer 'Conv2d'"):
        profile(nn.Conv2d(3, 4, 3), torch.randn(1, 5, 8, 8), measure=False, peaks=False)


def test_model_state_is_left_alone(fake_peaks):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile(model, torch.randn(2, 3, 8, 8), backward=True, repeat=2, warmup=1, peaks=fake_peaks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model[1]._forward_hooks and "_conv_stages" not in vars(model)


def test_shared_module_is_one_row_with_calls(fake_peaks):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    report = profile(Twice(), torch.randn(1, 4, 6, 6), repeat=1, warmup=0, peaks=fake_peaks)
    [row] = report.rows
    assert row.calls == 2 and row.macs == 2 * 6 * 6 * 4 * 4 * 9


def test_bad_arguments():
    with pytest.raises(ValueError, match="repeat"):
        profile(nn.ReLU(), torch.randn(2), repeat=0)
    with pytest.raises(TypeError, match="example_input"):
        profile(nn.ReLU(), "x")
    with pytest.raises(TypeError, match="nn.Module"):
        profile(lambda x: x, torch.randn(2))
