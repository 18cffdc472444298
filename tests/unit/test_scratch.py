"""Scratch directories: a killed owner's directory is removed by the next one made; a live owner's never."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from onnx_stage.scratch import make_scratch, remove_orphans, remove_scratch, scratch_directory

OWNER = """
import sys, time
from onnx_stage.scratch import make_scratch
path = make_scratch("run")
(path / "model.onnx.data").write_bytes(b"0" * 4096)
print(path, flush=True)
time.sleep(600)
"""


@pytest.fixture()
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def start_owner() -> tuple[subprocess.Popen, Path]:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    return owner, Path(owner.stdout.readline().strip())


def test_a_killed_owners_directory_is_removed_by_the_next_one_and_a_live_owners_is_kept(temp: Path) -> None:
    killed, orphan = start_owner()
    alive, kept = start_owner()
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert orphan.is_dir() and orphan.parent == temp

        with scratch_directory("run") as mine:
            assert not orphan.exists()
            assert (kept / "model.onnx.data").is_file()
            assert remove_orphans() == []  # its own and the live owner's stay
            assert mine.is_dir()
        assert not mine.exists()
    finally:
        alive.kill()
        killed.kill()
        alive.wait()


def test_directories_not_made_here_are_left_alone(temp: Path) -> None:
    others = [temp / "onnx-stage-production-abc", temp / "keras-worker-old", temp / "tmpabcdef"]
    for path in others:
        path.mkdir()
    fresh_without_lock = temp / "onnx-stage-scratch-run-justmade"  # between mkdtemp and its lock
    fresh_without_lock.mkdir()
    stale_without_lock = temp / "onnx-stage-scratch-run-stale"
    stale_without_lock.mkdir()
    os.utime(stale_without_lock, (0, 0))

    path = make_scratch("keras")
    try:
        assert all(p.is_dir() for p in others) and fresh_without_lock.is_dir()
        assert not stale_without_lock.exists()
    finally:
        remove_scratch(path)
    assert not path.exists()


def test_a_kind_is_a_plain_word() -> None:
    with pytest.raises(ValueError, match="lowercase letters only"):
        make_scratch("../escape")
