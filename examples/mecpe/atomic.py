"""Writing a file so that no reader ever sees half of it: a temporary file next to it, fsync,
then one rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, mode: int = 0o644) -> None:
    """Create ``path`` (and its folder) with the bytes ``write(handle)`` produces, atomically.

    The bytes go to a temporary file in the same folder (so the rename cannot cross file
    systems), are flushed to disk, and replace ``path`` in one ``os.replace``; on any error the
    temporary file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
