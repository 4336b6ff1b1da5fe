"""``sepconv convert``: happy paths and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sepconv.cli import main
from sepconv.layers.separable import _SeparableConvNd

FACTORY = """
import torch
from torch import nn

def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

def broken():
    raise RuntimeError("boom")
"""


@pytest.fixture
def factory(tmp_path: Path) -> str:
    path = tmp_path / "models.py"
    path.write_text(FACTORY)
    return f"{path}:net"


def load(path: Path) -> nn.Module:
    return torch.load(path, weights_only=False)


def test_convert_exact(factory, tmp_path, capsys):
    out = tmp_path / "out.pt"
    assert main(["convert", factory, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sepconv conversion plan (exact" in text and "wrote" in text
    model = load(out)
    assert isinstance(model[0], _SeparableConvNd) and isinstance(model[2], _SeparableConvNd)
    reference = __import__("importlib").util
    spec = reference.spec_from_file_location("m", factory.rsplit(":", 1)[0])
    module = reference.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), module.net()(x), atol=1e-5)
    assert not list(tmp_path.glob(".out.pt.*"))  # no temporary left behind


def test_convert_budget_with_calibration(factory, tmp_path, capsys):
    out = tmp_path / "small.pt"
    code = main(
        [
            "convert",
            factory,
            "--budget",
            "0.4",
            "--calibrate",
            "2",
            "--input",
            "4x3x8x8",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "budget=0.4" in text and "svd→fit" in text and "per sample of (1, 3, 8, 8)" in text
    assert any(isinstance(m, _SeparableConvNd) for m in load(out).modules())


def test_convert_rank_from_module_factory_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "o.pt"
    out.write_bytes(b"keep")
    code = main(["convert", "tests.conversion.helpers:SmallCNN", "--rank", "2", "-o", str(out)])
    err = capsys.readouterr().err
    assert (
        code != 0
        and "already exists" in err
        and "--force" in err
        and len(err.strip().splitlines()) == 1
    )
    assert out.read_bytes() == b"keep"
    assert (
        main(
            [
                "convert",
                "tests.conversion.helpers:SmallCNN",
                "--rank",
                "2",
                "-o",
                str(out),
                "--force",
            ]
        )
        == 0
    )
    assert isinstance(load(out).blocks[0], _SeparableConvNd)


def test_convert_saved_module_needs_trust(factory, tmp_path, capsys):
    first = tmp_path / "a.pt"
    assert main(["convert", factory, "--rank", "1", "-o", str(first)]) == 0
    capsys.readouterr()
    second = tmp_path / "b.pt"
    assert main(["convert", str(first), "-o", str(second)]) != 0
    err = capsys.readouterr().err
    assert "--trust" in err and len(err.strip().splitlines()) == 1
    assert main(["convert", str(first), "--trust", "-o", str(second)]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "2", "--budget", "0.5"], "not allowed with"),
        (["--energy", "1.5"], "(0, 1]"),
        (["--rank", "0"], "positive integer"),
        (["--calibrate", "2"], "--calibrate needs --input"),
        (["--budget", "0.5"], "--budget needs --input"),
        (["--input", "1x3xfoo"], "1x3x32x32"),
    ],
)
def test_convert_bad_options(factory, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) if args[0] in ("--rank", "--energy", "--input") else _nothing():
        code = main(["convert", factory, *args, "-o", str(tmp_path / "o.pt")])
        assert code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("no_such_module_xyz:net", "cannot import"),
        ("{tmp}/models.py:missing", "has no attribute"),
        ("{tmp}/models.py:broken", "boom"),
        ("{tmp}/notes.txt", "notes.txt"),  # loading.py words this one; one line either way
        ("{tmp}/absent.pt", "no such file"),
    ],
)
def test_convert_bad_models(factory, tmp_path, capsys, model, message):
    (tmp_path / "notes.txt").write_text("not a model")
    code = main(["convert", model.format(tmp=tmp_path), "-o", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert code != 0 and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.pt").exists()


def test_convert_nan_weights(tmp_path, capsys):
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(model, path)
    code = main(["convert", str(path), "--trust", "-o", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert code == 1 and "layer '0'" in err and "NaN" in err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda state: state.pop("0.bias"), "missing keys 0.bias"),
        (
            lambda state: state.__setitem__("extra.weight", torch.zeros(1)),
            "unexpected keys extra.weight",
        ),
        (lambda state: state.__setitem__("5.bias", torch.zeros(7)), "size mismatch for 5.bias"),
    ],
)
def test_convert_weights_that_do_not_fit_name_the_keys(factory, tmp_path, capsys, edit, message):
    module_path = factory.rsplit(":", 1)[0]
    spec = __import__("importlib").util.spec_from_file_location("m2", module_path)
    module = __import__("importlib").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = module.net().state_dict()
    edit(state)
    weights = tmp_path / "w.pt"
    torch.save(state, weights)
    out = tmp_path / "o.pt"
    assert main(["convert", factory, "--weights", str(weights), "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_convert_output_in_a_missing_folder_fails_before_work(factory, tmp_path, capsys):
    out = tmp_path / "junk.txt" / "x.pt"
    (tmp_path / "junk.txt").write_text("mine")
    assert main(["convert", factory, "-o", str(out)]) != 0
    assert "not a directory" in capsys.readouterr().err
    assert (tmp_path / "junk.txt").read_text() == "mine"
