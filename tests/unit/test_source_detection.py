"""Which source kind an artifact is: MLflow flavors first, then files; and the float32 split-rounding check."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from onnx_stage.errors import StageError
from onnx_stage.sources import detect_source
from onnx_stage.sources.tabular import values_on_rounded_up_thresholds


def mlflow_model(directory: Path, flavors: dict, files: list[str]) -> Path:
    directory.mkdir(parents=True)
    (directory / "MLmodel").write_text(yaml.safe_dump({"flavors": flavors}))
    for name in files:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(b"")
    return directory


@pytest.mark.parametrize(("flavors", "files", "kind", "loaded"), [
    ({"keras": {"data": "data"}}, ["data/model.keras"], "keras", "data/model.keras"),
    ({"tensorflow": {"model_type": "keras", "data": "data"}}, ["data/model.h5"], "h5", "data/model.h5"),
    ({"tensorflow": {"model_type": "tf2-module", "saved_model_dir": "tf2model"}}, ["tf2model/saved_model.pb"],
     "saved_model", "tf2model"),
    ({"sklearn": {}, "python_function": {}}, ["model.skops"], "sklearn", "."),
    ({"lightgbm": {}}, ["model.pkl"], "lightgbm", "."),
    ({"xgboost": {}}, ["model.ubj"], "xgboost", "."),
])
def test_an_mlflow_model_is_detected_by_its_flavor(tmp_path: Path, flavors: dict, files: list[str], kind: str,
                                                   loaded: str) -> None:
    source = detect_source(mlflow_model(tmp_path / "model", flavors, files))
    assert (source.kind.name, source.path) == (kind, tmp_path / "model" / loaded)


def test_plain_files_are_detected_by_what_they_are(tmp_path: Path) -> None:
    (tmp_path / "exported" / "variables").mkdir(parents=True)
    (tmp_path / "exported" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "legacy.hdf5").write_bytes(b"")
    assert detect_source(tmp_path / "exported").kind.name == "saved_model"
    assert detect_source(tmp_path / "legacy.hdf5").kind.name == "h5"


def test_several_models_or_none_fail_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "a.keras").write_bytes(b"")
    (tmp_path / "b.h5").write_bytes(b"")
    with pytest.raises(StageError, match=r"several models in .*: a\.keras, b\.h5; point the stage at one of them"):
        detect_source(tmp_path)
    unknown = mlflow_model(tmp_path / "custom", {"python_function": {}}, ["model.pkl"])
    with pytest.raises(StageError, match=r"no supported model in .*custom \(its MLflow flavors: python_function\); "
                                         r"supported sources: keras: .*; h5: .*; saved_model: .*; sklearn: .*"):
        detect_source(unknown)


def test_only_a_value_equal_to_a_threshold_rounded_up_by_float32_changes_branch() -> None:
    low = np.float32(16.000002)
    high = np.nextafter(low, np.float32(32))
    midpoint = (float(low) + float(high)) / 2  # float32 rounds this tie up to `high` (even mantissa)
    features = np.array([[low], [high], [np.float32(3.0)]], np.float32)
    assert values_on_rounded_up_thresholds(features, {0: np.array([midpoint, 3.0])}) == [(1, 0, float(high), midpoint)]
    rounded_down = float(low) + 1e-7  # float32 rounds it down to `low`: no float32 lies between the two
    assert values_on_rounded_up_thresholds(features, {0: np.array([rounded_down])}) == []
