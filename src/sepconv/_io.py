"""Writing files without ever leaving a half-written or clobbered file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Raises FileExistsError if ``path`` exists and ``overwrite`` is False. On any error
    the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} already exists (use --force / overwrite=True to replace it)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO], None],
    *,
    binary: bool = False,
    overwrite: bool = True,
) -> Path:
    """Call ``write(file)`` on a temporary file, then rename it onto ``path``."""
    with (
        atomic_path(path, overwrite=overwrite) as tmp,
        open(tmp, "wb" if binary else "w") as handle,
    ):
        write(handle)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), overwrite=overwrite)
