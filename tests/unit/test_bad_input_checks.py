"""The cheap refusals behind the bad-input corpus, without Keras: broken model files, non-finite weights, string
inputs, a full disk."""
from __future__ import annotations

import errno
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from onnx_stage.errors import StageError, disk_full
from onnx_stage.keras_checks import refuse_non_finite_weights, refuse_string_inputs
from onnx_stage.sources.file_checks import HDF5_SIGNATURE, check_model_file


def keras_zip(path: Path, config: bytes | None = b'{"class_name": "Functional"}') -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        if config is not None:
            archive.writestr("config.json", config)
    return path


@pytest.mark.parametrize(("content", "problem"), [
    (b"", r"empty file"),
    (b"\x00\xff" * 64, r"not a zip: it starts with bytes 00 ff"),
    (b"model: tiny\n", r"not a zip: it is text, starting 'model: tiny'"),
    ("truncated", r"truncated zip: its end, the zip directory, is missing"),
    ("no-config", r"no config\.json inside; it holds metadata\.json"),
    ("cut-config", r"config\.json is not valid JSON, cut off or damaged"),
])
def test_a_keras_file_that_is_not_a_keras_archive_is_named_with_the_fix(tmp_path: Path, content: object,
                                                                       problem: str) -> None:
    path = tmp_path / "model.keras"
    if content == "truncated":
        data = keras_zip(tmp_path / "whole.keras").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "no-config":
        keras_zip(path, config=None)
    elif content == "cut-config":
        keras_zip(path, config=b'{"class_name": "Funct')
    else:
        path.write_bytes(content)
    with pytest.raises(StageError, match=rf"^{path} is not a Keras archive \({problem}.*\): re-save it with "
                                         r"model\.save\(\)$"):
        check_model_file(path)


def test_good_files_and_other_paths_pass(tmp_path: Path) -> None:
    check_model_file(keras_zip(tmp_path / "model.keras"))
    (tmp_path / "model.h5").write_bytes(HDF5_SIGNATURE + b"\0" * 64)
    check_model_file(tmp_path / "model.h5")
    (tmp_path / "user_block.h5").write_bytes(b"\0" * 512 + HDF5_SIGNATURE)
    check_model_file(tmp_path / "user_block.h5")
    check_model_file(tmp_path)  # a directory (SavedModel, MLflow model) is not this check's business


def test_an_h5_file_that_is_not_hdf5_is_named(tmp_path: Path) -> None:
    (tmp_path / "model.h5").write_text("<html>login page</html>")
    with pytest.raises(StageError, match=r"model\.h5 is not an HDF5 file \(it is text, starting '<html>"):
        check_model_file(tmp_path / "model.h5")


@pytest.mark.parametrize(("value", "named"), [(np.nan, "NaN"), (np.inf, r"\+inf"), (-np.inf, "-inf")])
def test_non_finite_weights_name_the_layer_and_count(value: float, named: str) -> None:
    kernel = np.ones((4, 3), np.float32)
    kernel[1, 2] = value
    weights = [SimpleNamespace(path="dense_1/kernel", numpy=lambda: np.ones((2, 2))),
               SimpleNamespace(path="dense_3/kernel", numpy=lambda: kernel)]
    with pytest.raises(ValueError, match=rf"^layer dense_3 has {named} weights \(kernel: 1 of 12 values\), .*"
                                         "re-save the model and register it again$"):
        refuse_non_finite_weights(weights)
    refuse_non_finite_weights(weights[:1] + [SimpleNamespace(path="lookup/table", numpy=lambda: np.arange(3))])


def test_string_inputs_are_named_with_what_to_do() -> None:
    refuse_string_inputs([SimpleNamespace(name="pixels", dtype="float32")])
    with pytest.raises(ValueError, match=r"input 'review' takes strings.*token ids"):
        refuse_string_inputs([SimpleNamespace(name="pixels", dtype="float32"),
                              SimpleNamespace(name="review", dtype="string")])


def test_a_full_disk_is_recognised_through_wrapping_exceptions(tmp_path: Path) -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("Failed to download artifacts from path ''") from cause
    except RuntimeError as wrapped:
        assert disk_full(wrapped, tmp_path / "not" / "yet" / "made")
    assert not disk_full(RuntimeError("404"), tmp_path)  # this disk has room
