"""Keras models, in Keras 3's .keras format or as .h5/.hdf5 (written by Keras 3, or legacy Keras 2 / tf-keras files,
which Keras 3's loader reads), as a file or inside an MLflow `keras` flavor or a `tensorflow` flavor that holds a
Keras model (mlflow.tensorflow.log_model of a Keras model: data/model.keras)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from onnx_stage.keras_worker import KERAS_OPERATIONS
from onnx_stage.sources.kind import Flavors, SourceKind, files_with_suffix

KERAS_SUFFIXES, H5_SUFFIXES = {".keras"}, {".h5", ".hdf5"}


def _flavor_file(suffixes: set[str]) -> Callable[[Path, Flavors], Path | None]:
    """The model file of a keras flavor, or of a tensorflow flavor of a Keras model, if it has one of `suffixes`."""
    def detect(location: Path, flavors: Flavors) -> Path | None:
        tensorflow = flavors.get("tensorflow", {})
        if "keras" not in flavors and tensorflow.get("model_type") != "keras":
            return None
        data = location / flavors.get("keras", tensorflow).get("data", "data")
        found = files_with_suffix(data, KERAS_SUFFIXES | H5_SUFFIXES)
        return found[0] if len(found) == 1 and found[0].suffix in suffixes else None
    return detect


KERAS = SourceKind(
    name="keras", detected_by="a .keras file, or an MLflow keras/tensorflow flavor holding one",
    operations=KERAS_OPERATIONS, from_flavors=_flavor_file(KERAS_SUFFIXES),
    from_files=lambda location: files_with_suffix(location, KERAS_SUFFIXES))
H5 = SourceKind(
    name="h5", detected_by="a .h5/.hdf5 Keras file (Keras 3 or legacy Keras 2/tf-keras)",
    operations=KERAS_OPERATIONS, from_flavors=_flavor_file(H5_SUFFIXES),
    from_files=lambda location: files_with_suffix(location, H5_SUFFIXES))
