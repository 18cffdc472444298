"""Scratch directories that outlive no process: a killed run's files are removed by the next run.

A conversion writes its downloads, ONNX files and reports (GBs for a model over 2 GB) to a scratch directory in the
system's temporary directory, and its Keras child writes TensorFlow's autograph sources to its own. Both are removed
when their owner ends; an owner that is killed (the OOM killer, SIGKILL, a worker's pod evicted) cannot. So every
scratch directory holds an `owner.lock` its owner keeps locked (flock) for its life: the kernel drops the lock when
the owner dies, whatever kills it, and the next scratch directory made on the machine removes every directory whose
lock it can take. flock works across processes and PID namespaces on one filesystem, so containers sharing a
temporary directory cannot remove each other's live directories.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "onnx-stage-scratch-"
LOCK_FILE = "owner.lock"
UNLOCKED_GRACE_SECONDS = 60  # a directory without its lock file yet is being made; older ones lost their owner early
_OWN_LOCKS: dict[Path, int] = {}  # this process's directories → their locked descriptor


def make_scratch(kind: str) -> Path:
    """A new directory `onnx-stage-scratch-<kind>-XXXXXXXX` in the temporary directory (TMPDIR), locked by this
    process until remove_scratch(); orphaned ones (their owner died) are removed first.

    Raises:
        OSError: the temporary directory cannot be written (full, read-only).
    """
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"scratch kind {kind!r}: lowercase letters only")
    remove_orphans()
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-"))
    descriptor = os.open(path / LOCK_FILE, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    _OWN_LOCKS[path] = descriptor
    return path


def remove_scratch(path: Path) -> None:
    """Remove a directory make_scratch() made in this process, then release its lock."""
    shutil.rmtree(path, ignore_errors=True)
    descriptor = _OWN_LOCKS.pop(path, None)
    if descriptor is not None:
        os.close(descriptor)


@contextmanager
def scratch_directory(kind: str) -> Iterator[Path]:
    """make_scratch() for the block; removed after it, whatever the block raised."""
    path = make_scratch(kind)
    try:
        yield path
    finally:
        remove_scratch(path)


def remove_orphans() -> list[Path]:
    """Remove the scratch directories in the temporary directory whose owner died; returns them."""
    orphans = [path for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*")
               if path not in _OWN_LOCKS and path.is_dir() and _owner_gone(path)]
    for path in orphans:
        shutil.rmtree(path, ignore_errors=True)
    return orphans


def _owner_gone(path: Path) -> bool:
    """Whether the lock of this scratch directory can be taken (its owner died), or it never got one and is older
    than UNLOCKED_GRACE_SECONDS."""
    try:
        descriptor = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            return time.time() - path.stat().st_mtime > UNLOCKED_GRACE_SECONDS
        except FileNotFoundError:
            return False  # removed meanwhile
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False  # its owner is alive
    finally:
        os.close(descriptor)
