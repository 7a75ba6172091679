"""Writing a file whole: a temporary file in the target's folder, flushed to disk, then renamed over it.

An interrupted run leaves the old file or none, never half of one; a failed write removes its temporary.
Temporaries start with :data:`TMP_PREFIX`, so a folder scan can tell them from finished files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["TMP_PREFIX", "write_atomic"]

TMP_PREFIX = ".tmp-"


def write_atomic(path: str | Path, data: bytes | str, crash_check: Callable[[], None] | None = None) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` through a temporary file; return ``path``.

    ``crash_check`` runs after the temporary is on disk and before the rename (tests use it to crash there).
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if crash_check is not None:
            crash_check()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
