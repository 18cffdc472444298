"""The one exception type the user sees (StageError: one line naming the cause and the fix) and the disk-full test."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

DISK_FULL_BYTES = 1 << 20  # a filesystem with less room than this is full for a model download


class StageError(Exception):
    """A failure the user can act on: the message is one line that names the cause and the fix."""


def disk_full(error: BaseException, path: Path) -> bool:
    """Whether `error`, or an error it was raised from, is ENOSPC, or the filesystem holding `path` (or its nearest
    existing parent) is full: libraries that catch the OSError (MLflow's downloads) lose its errno."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing is not None and shutil.disk_usage(existing).free < DISK_FULL_BYTES
