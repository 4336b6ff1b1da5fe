"""sepconv.explain: weight layout, channel mapping, the seeds' numbers, the PNG."""

from __future__ import annotations

import json

import pytest

import sepconv
from sepconv.analysis import explain


def test_seed_003_parameters():
    e = explain(10, 32, 3, input_size=50)
    assert e.weight_shape == (32, 10, 3, 3)
    assert e.forms["standard"].params == 2912 and e.forms["separable"].params == 452
    text = e.to_text()
    assert "2,912" in text and "452" in text and "48x48" in text


def test_seed_004_multiplications():
    e = explain(3, 128, 3, input_size=7)
    assert e.output_size == (5, 5)
    assert e.forms["standard"].macs == 86_400 and e.forms["separable"].macs == 10_275
    assert (e.forms["depthwise"].macs, e.forms["pointwise"].macs) == (675, 9_600)
    assert "86,400" in str(e) and "10,275" in str(e)


def test_depthwise_multiplier_mapping():
    e = explain(4, 12, 3, groups=4)
    assert e.depth_multiplier == 3 and e.weight_shape == (12, 1, 3, 3)
    for c in range(4):
        assert e.filters_of(c) == range(c * 3, c * 3 + 3)
    assert e.inputs_of(7) == range(2, 3)
    assert "filters c*3 ... c*3+2 read input channel c" in e.to_text()
    assert e.forms["given"].params == 12 * 9 + 12
    assert e.axes[1].size == 1 and "depthwise" in e.axes[1].meaning


def test_grouped_and_dense_mapping():
    e = explain(8, 4, (3, 5), groups=2, input_size=(9, 9))
    assert e.filters_of(5) == range(2, 4) and e.inputs_of(0) == range(0, 4)
    assert [a.name for a in e.axes] == [
        "out_channels",
        "in_channels / groups",
        "kernel height",
        "kernel width",
    ]
    dense = explain(3, 5, 3)
    assert dense.filters_of(2) == range(5) and dense.macs_per_position
    assert dense.forms["standard"].macs == 5 * 3 * 9


def test_rank_1_and_3_and_json():
    assert explain(2, 4, (3,), input_size=10).output_size == (8,)
    e = explain(2, 4, (3, 3, 3), input_size=5, padding=1, stride=2)
    assert e.output_size == (3, 3, 3) and e.weight_shape == (4, 2, 3, 3, 3)
    data = json.loads(e.to_json())
    assert data["forms"]["standard"]["params"] == 4 * 2 * 27 + 4
    assert data["groups_map"] == [{"group": 0, "filters": [0, 3], "inputs": [0, 1]}]


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        explain(3, 7, 3, groups=3)
    with pytest.raises(ValueError, match="too small"):
        explain(3, 6, 5, input_size=3)
    with pytest.raises(TypeError):
        explain(3, 6, 3, bias=1)
    with pytest.raises(ValueError, match="input_channel"):
        explain(3, 6, 3).filters_of(3)


def test_png(tmp_path):
    for args in ((10, 32, 3), (3, 6, 3), (40, 40, 3)):
        groups = args[0] if args[1] % args[0] == 0 and args[0] < 20 else 1
        path = sepconv.explain(*args, groups=groups, input_size=9).plot(tmp_path / f"{args[0]}.png")
        assert path.read_bytes()[:4] == b"\x89PNG"
