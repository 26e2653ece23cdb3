"""Atomic file output: a file appears under its final name only once it is complete.

Everything ndive-models writes (jet files, checkpoints, histories, predictions, metrics,
configs) is first written to ``<name>.partial`` and then renamed with :func:`os.replace`,
which is atomic on one file system: an interrupted run leaves either the old file or none,
never a half-written one that looks complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "partial_path"]


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name a file is written under before it is renamed to ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes the file ``tmp``
    (:func:`partial_path`), which is then renamed to ``path``. If ``write`` raises (Ctrl-C
    included), ``tmp`` is deleted and ``path`` is left as it was.

    Example: ``atomic_write(out / "metrics.json", lambda f: f.write_text(text))``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tmp = partial_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
