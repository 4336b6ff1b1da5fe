"""The kernels' translation unit is several files (``csrc/sepconv_kernels.cpp`` and the parts
it includes): the build cache key must cover every one, or a changed part would load a stale
library."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sepconv.kernels import _build

INCLUDE = re.compile(r'^#include "([^"]+)"', re.MULTILINE)


def _included(source: Path) -> set[str]:
    """Names of the local files that ``source`` includes, directly or through others."""
    seen: set[str] = set()
    todo = [source]
    while todo:
        for name in INCLUDE.findall(todo.pop().read_text()):
            if name not in seen:
                seen.add(name)
                todo.append(source.parent / name)
    return seen


def test_sources_list_every_included_part():
    names = {path.name for path in _build.SOURCES}
    included = _included(_build.SOURCE)
    assert included, "the translation unit includes no parts"
    assert included <= names, f"parts missing from SOURCES: {sorted(included - names)}"
    assert names - {_build.SOURCE.name} == included, "SOURCES lists a file nothing includes"


def test_build_key_changes_with_every_part(tmp_path, monkeypatch):
    copies = [Path(shutil.copy(path, tmp_path / path.name)) for path in _build.SOURCES]
    monkeypatch.setattr(_build, "SOURCES", tuple(copies))
    base = _build.build_key(native=True)
    for copy in copies:
        text = copy.read_text()
        copy.write_text(text + "\n// changed\n")
        assert _build.build_key(native=True) != base, copy.name
        copy.write_text(text)
    assert _build.build_key(native=True) == base
