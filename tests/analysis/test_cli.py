"""``sepconv profile / compare / peaks / explain`` on a real MobileNet-style model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sepconv.cli import main

MODELS = Path(__file__).resolve().parent / "models.py"
MOBILENET = f"{MODELS}:mobilenet_stack"
DENSE = f"{MODELS}:dense_stack"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_profile_writes_every_format(capsys, tmp_path):
    md, csv_path, js, png = (tmp_path / name for name in ("r.md", "r.csv", "r.json", "r.png"))
    code, out, err = run(
        capsys,
        "profile",
        MOBILENET,
        "--input",
        "1x3x32x32",
        "--repeat",
        "2",
        "--warmup",
        "0",
        "--md",
        str(md),
        "--csv",
        str(csv_path),
        "--json",
        str(js),
        "--plot",
        str(png),
    )
    assert code == 0, err
    assert "3.norm" in out and "separable" in out and "total" in out
    data = json.loads(js.read_text())
    assert data["totals"]["params"] == data["totals"]["model_params"] == 36_906
    assert data["totals"]["forward_ms"] > 0
    rows = list(csv.DictReader(csv_path.open()))
    assert sum(int(r["macs"]) for r in rows[:-1]) == int(rows[-1]["macs"]) == data["totals"]["macs"]
    assert "| 7 | separable |" in md.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG"
    # Outputs are not overwritten without --force.
    code, _, err = run(
        capsys, "profile", MOBILENET, "--input", "1x3x32x32", "--no-measure", "--md", str(md)
    )
    assert code == 1 and "already exists" in err


def test_profile_to_stdout_with_backward(capsys):
    code, out, err = run(
        capsys,
        "profile",
        MOBILENET,
        "--input",
        "2x3x16x16",
        "--repeat",
        "1",
        "--warmup",
        "0",
        "--backward",
        "--json",
        "-",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["totals"]["backward_ms"] > 0 and all(
        r["backward_ms"] is not None for r in data["rows"]
    )


def test_compare(capsys):
    code, out, err = run(
        capsys,
        "compare",
        DENSE,
        MOBILENET,
        "--input",
        "1x3x32x32",
        "--repeat",
        "2",
        "--warmup",
        "0",
        "--md",
        "-",
    )
    assert code == 0, err
    assert "| MACs |" in out and "| forward ms |" in out
    macs = next(line for line in out.splitlines() if line.startswith("| MACs |"))
    assert macs.endswith("| 0.141x |")  # the separable stack does 1/7 of the dense stack's MACs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", MOBILENET, "--input", "1x3xfoo"], "is not a shape"),
        (
            ["profile", MOBILENET, "--input", "1x4x32x32"],
            "layer '0' (Conv2d) failed on input of shape 1x4x32x32",
        ),
        (["profile", MOBILENET, "--input", "1x3x32x32", "--dtype", "int8"], "unknown dtype 'int8'"),
        (["profile", f"{MODELS}:no_such_factory", "--input", "1x3x32x32"], "has no attribute"),
        (
            ["compare", MOBILENET, DENSE, "--input", "1x5x32x32"],
            "failed on input of shape 1x5x32x32",
        ),
        (["peaks", "--dtype", "complex"], "unknown dtype"),
        (
            [
                "explain",
                "--in-channels",
                "3",
                "--out-channels",
                "7",
                "--kernel-size",
                "3",
                "--groups",
                "3",
            ],
            "divisible",
        ),
        (
            ["explain", "--in-channels", "3", "--out-channels", "6", "--kernel-size", "3x"],
            "--kernel-size",
        ),
    ],
)
def test_bad_input_is_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_explain_seeds(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "explain",
        "--in-channels",
        "10",
        "--out-channels",
        "32",
        "--kernel-size",
        "3",
        "--input-size",
        "50",
    )
    assert code == 0 and "(32, 10, 3, 3)" in out and "2,912" in out and "452" in out
    png = tmp_path / "map.png"
    code, out, _ = run(
        capsys,
        "explain",
        "--in-channels",
        "3",
        "--out-channels",
        "128",
        "--kernel-size",
        "3",
        "--input-size",
        "7",
        "--png",
        str(png),
    )
    assert code == 0 and "86,400" in out and "10,275" in out and png.read_bytes()[:4] == b"\x89PNG"
    code, out, _ = run(
        capsys,
        "explain",
        "--in-channels",
        "3",
        "--out-channels",
        "6",
        "--kernel-size",
        "3",
        "--groups",
        "3",
        "--json",
    )
    assert code == 0 and json.loads(out)["groups_map"][1] == {
        "group": 1,
        "filters": [2, 3],
        "inputs": [1, 1],
    }


def test_peaks(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path))
    code, out, err = run(capsys, "peaks", "--threads", "1", "--json")
    assert code == 0, err
    [entry] = json.loads(out)
    assert entry["threads"] == 1 and entry["gemm_flops"] > 0 and (tmp_path / "peaks.json").exists()
    code, out, _ = run(capsys, "peaks", "--threads", "1")
    assert code == 0 and "torch.mm GFLOP/s" in out
