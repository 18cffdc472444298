"""Source kinds, one small module each, registered in SOURCE_KINDS; the kind is detected from the fetched artifact.

Detection looks at the MLflow model's flavors first (MLmodel), then at the files (.keras, .h5, a SavedModel
directory). Adding a kind: a module defining a SourceKind (kind.py) whose `operations` module serves load_model,
convert, predict, time_predict, layer_outputs, input_hints and explain_mismatch in the child process; list it here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onnx_stage.errors import StageError
from onnx_stage.sources import keras_file, lightgbm_flavor, saved_model, sklearn_flavor, xgboost_flavor
from onnx_stage.sources.kind import SourceKind, read_flavors

SOURCE_KINDS: dict[str, SourceKind] = {kind.name: kind for kind in (
    keras_file.KERAS, keras_file.H5, saved_model.SAVED_MODEL, sklearn_flavor.SKLEARN, lightgbm_flavor.LIGHTGBM,
    xgboost_flavor.XGBOOST,
)}


@dataclass(frozen=True)
class DetectedSource:
    kind: SourceKind
    path: Path  # what the child loads: a model file, a SavedModel directory or an MLflow model directory


def detect_source(location: Path) -> DetectedSource:
    flavors = read_flavors(location)
    for kind in SOURCE_KINDS.values():
        if path := kind.from_flavors(location, flavors):
            return DetectedSource(kind, path)
    found = [DetectedSource(kind, path) for kind in SOURCE_KINDS.values() for path in kind.from_files(location)]
    if len(found) > 1:
        raise StageError(f"several models in {location}: {', '.join(str(f.path.relative_to(location)) for f in found)}; "
                         "point the stage at one of them")
    if not found:
        seen = f" (its MLflow flavors: {', '.join(sorted(flavors))})" if flavors else ""
        raise StageError(f"no supported model in {location}{seen}; supported sources: {supported_sources()}")
    return found[0]


def supported_sources() -> str:
    return "; ".join(f"{kind.name}: {kind.detected_by}" for kind in SOURCE_KINDS.values())
