"""Cheap checks of a Keras model file before the child loads it, so a broken file is named as such instead of
Keras' misleading "File not found" or a JSONDecodeError from deep inside its loader."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from onnx_stage.errors import StageError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HDF5_SIGNATURE_OFFSETS = (0, 512, 1024, 2048)  # a user block moves the superblock to a power of two ≥ 512


def check_model_file(path: Path) -> None:
    """Refuse a .keras file that is not a Keras archive or a .h5/.hdf5 file that is not HDF5; other paths pass.

    Raises StageError naming the file, what is wrong with it and the fix."""
    if path.is_file() and path.suffix == ".keras":
        problem = keras_archive_problem(path)
        if problem:
            raise StageError(f"{path} is not a Keras archive ({problem}): re-save it with model.save()")
    elif path.is_file() and path.suffix in {".h5", ".hdf5"} and not _has_hdf5_signature(path):
        raise StageError(f"{path} is not an HDF5 file ({_describe_start(path)}): re-save it with model.save() "
                         "as .keras (or .h5)")


def keras_archive_problem(path: Path) -> str | None:
    """What makes `path` unreadable as a Keras 3 archive (a zip holding a JSON config.json), or None."""
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    with path.open("rb") as stream:
        head = stream.read(4)
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK"):
            return f"truncated zip: its end, the zip directory, is missing ({size} bytes)"
        return f"not a zip: {_describe_start(path)}"
    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                return f"no config.json inside; it holds {', '.join(archive.namelist()[:5]) or 'nothing'}"
            json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"damaged zip: {error}"
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"config.json is not valid JSON, cut off or damaged: {error}"
    return None


def _has_hdf5_signature(path: Path) -> bool:
    with path.open("rb") as stream:
        for offset in HDF5_SIGNATURE_OFFSETS:
            stream.seek(offset)
            if stream.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
    return False


def _describe_start(path: Path) -> str:
    with path.open("rb") as stream:
        head = stream.read(256)
    if not head:
        return "empty file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with bytes {head[:8].hex(' ')}"
    return f"it is text, starting {text.splitlines()[0][:40]!r}" if text.strip() else "it is blank text"
