"""XGBoost models (XGBClassifier/XGBRegressor) from an MLflow `xgboost` flavor, converted by onnxmltools'
convert_xgboost. XGBoost keeps its split thresholds in float32, as ONNX does, so no split rounds differently.
This module is also the operations module the child serves for the kind: tabular.py's operations with this
load_model."""
from __future__ import annotations

from typing import Any

from onnx_stage.sources.kind import SourceKind, flavor_model_dir
from onnx_stage.sources.tabular import (convert, describe_boosting_model, explain_mismatch,  # noqa: F401
                                        input_hints, layer_outputs, predict, time_predict)

XGBOOST = SourceKind(name="xgboost", detected_by="an MLflow xgboost flavor (scikit-learn API model)",
                     operations=__name__, from_flavors=flavor_model_dir("xgboost"),
                     own_routes=("onnxmltools_xgboost",))


def load_model(state: dict[str, Any], model_file: str, custom_object_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    import mlflow.xgboost
    import xgboost

    return describe_boosting_model(state, mlflow.xgboost.load_model(model_file), xgboost, lambda: {})
