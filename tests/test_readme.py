"""The README's Python examples run and print what they claim."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run():
    blocks = _python_blocks()
    assert blocks, "the README has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert tuple(namespace["layer"](namespace["x"]).shape) == (5, 32, 48, 48)
    assert sum(p.numel() for p in namespace["layer"].parameters()) == 452
    assert (namespace["c"].standard.macs, namespace["c"].separable.macs) == (86400, 10275)


def test_readme_gives_exactly_two_setup_commands():
    setup = README.read_text().split("## Set-up", 1)[1].split("##", 1)[0]
    commands = [
        line.split("#")[0].strip() for line in setup.splitlines() if line.startswith("make ")
    ]
    assert commands == ["make demo", "make test"]
