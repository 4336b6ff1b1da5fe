"""``sepconv demo`` in --fast mode: report files, printed numbers, determinism, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sepconv.cli import main
from sepconv.demo import DemoConfig
from sepconv.demo.metrics import count_macs, count_params
from sepconv.demo.report import CHART, REPORT, RESULTS

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys, out: Path, *extra: str) -> str:
    code = main(["demo", "--fast", "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_fast_demo_writes_report_with_printed_numbers_and_repeats_exactly(tmp_path, capsys):
    outputs, results = [], []
    for i in range(2):
        out = tmp_path / f"run{i}"
        stdout = run_cli(capsys, out)
        for name in (REPORT, CHART, RESULTS):
            assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert (out / CHART).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind
        outputs.append(stdout)
        results.append(json.loads((out / RESULTS).read_text()))

    stdout, report, result = outputs[0], (tmp_path / "run0" / REPORT).read_text(), results[0]
    rows = result["rows"]
    assert [r["key"] for r in rows] == ["dense", "svd", "calibrated", "distilled", "scratch"]
    # every number of the printed table is in the report, row by row
    for row in rows:
        printed = next(line for line in stdout.splitlines() if row["model"] in line)
        in_report = next(
            line for line in report.splitlines() if line.startswith(f"| {row['model']} |")
        )
        printed_cells = [cell.strip() for cell in printed.strip().strip("│").split("│")]
        report_cells = [cell.strip() for cell in in_report.strip().strip("|").split("|")]
        assert len(printed_cells) == 7 and printed_cells == report_cells, (printed, in_report)
        assert f"{row['params']:,}" in printed and f"{row['macs']:,}" in printed
        assert f"{100 * row['accuracy']:.2f}%" in printed
    assert "Target" in stdout and "Target" in report
    # the converted networks really are >= 3x cheaper, and the counts are consistent
    dense = rows[0]
    for row in rows[1:]:
        assert dense["macs"] / row["macs"] >= 3.0
        assert row["params"] < dense["params"]
    # identical accuracies (and counts) on every run
    for a, b in zip(results[0]["rows"], results[1]["rows"]):
        assert (a["accuracy"], a["params"], a["macs"]) == (b["accuracy"], b["params"], b["macs"])


def test_bad_options_fail_cleanly(tmp_path, capsys):
    assert main(["demo", "--fast", "--rank", "0", "--out", str(tmp_path)]) == 2
    assert "rank" in capsys.readouterr().err
    with pytest.raises(ValueError):
        DemoConfig(epochs=0).resolved()
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    for out in (mine, mine / "sub"):
        assert main(["demo", "--fast", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "is a file" in err and len(err.strip().splitlines()) == 1
    assert mine.read_text() == "mine"


def test_mac_counter_counts_separable_stages_and_linear():
    import torch
    from torch import nn

    import sepconv

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        sepconv.SeparableConv2d(8, 16, 3, padding=1, depth_multiplier=2),
        sepconv.SeparableConv2d(
            16, 4, 3, stride=2, mid_norm_layer="batchnorm", mid_act_layer="relu"
        ),
        nn.Flatten(),
        nn.LazyLinear(5),
    )
    x = torch.randn(1, 3, 9, 9)
    model(x)
    expected = 81 * 8 * 3 * 9 + 81 * 16 * (9 + 16) + 16 * 16 * (9 + 4) + 4 * 16 * 5
    assert count_macs(model, x) == expected
    assert count_macs(model, torch.randn(2, 3, 9, 9)) == 2 * expected
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_distributed_two_processes(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "sepconv.demo", "--fast", "--distributed", "--nproc", "2"]
    proc = _run_demo_processes([*command, "--out", str(out)], tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / RESULTS).read_text())
    assert result["world_size"] == 2
    assert len(result["rows"]) == 5 and (out / REPORT).is_file() and (out / CHART).is_file()
    report = (out / REPORT).read_text()
    assert "2 process(es)" in report and "--distributed" in report
    for row in result["rows"]:
        assert row["model"] in proc.stdout and f"{100 * row['accuracy']:.2f}%" in proc.stdout
        assert 0.0 <= row["accuracy"] <= 1.0
    assert result["rows"][0]["accuracy"] > 0.8
    assert proc.stdout.count("sepconv demo -- digits") == 1  # only rank 0 prints the table


# A demo worker aborted with this C++ message now and then (torchrun: 2 of about 95 runs, 3 of
# 30 beside a busy process; spawned: about 1 in 5 CI runs) in the interpreter's teardown,
# where gloo's threads, which outlive destroy_process_group, went down; the demo's workers
# end with os._exit instead (sepconv.demo.distributed.exit_without_teardown: torchrun since
# run Z, docs/performance.md, 0 of 56 beside the busy process; spawned since run AC, 0 of 30).
# Should that teardown be reached another way after the demo finished (its results written),
# such a run is repeated once; any other failure (a worker that raised may abort in the
# teardown too), or that one twice, fails.
_TEARDOWN_ABORT = "terminate called without an active exception"


def _run_demo_processes(command: list[str], cwd: Path, out: Path) -> subprocess.CompletedProcess:
    def run():
        (out / RESULTS).unlink(missing_ok=True)
        return subprocess.run(
            command, capture_output=True, text=True, timeout=240, env=_subprocess_env(), cwd=cwd
        )

    proc = run()
    if proc.returncode != 0 and _TEARDOWN_ABORT in proc.stderr and (out / RESULTS).is_file():
        proc = run()
    return proc


@pytest.mark.slow
def test_same_module_under_torchrun(tmp_path):
    out = tmp_path / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "sepconv.demo", "--fast", "--out", str(out)]
    proc = _run_demo_processes(command, tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / RESULTS).read_text())
    assert result["world_size"] == 2 and len(result["rows"]) == 5
    assert proc.stdout.count("sepconv demo -- digits") == 1
