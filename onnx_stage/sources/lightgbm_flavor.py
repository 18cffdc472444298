"""LightGBM models (LGBMClassifier/LGBMRegressor) from an MLflow `lightgbm` flavor, converted by onnxmltools'
convert_lightgbm. This module is also the operations module the child serves for the kind: tabular.py's operations
with this load_model."""
from __future__ import annotations

from typing import Any

import numpy as np

from onnx_stage.sources.kind import SourceKind, flavor_model_dir
from onnx_stage.sources.tabular import (SplitThresholds, convert, describe_boosting_model,  # noqa: F401
                                        explain_mismatch, input_hints, layer_outputs, predict, time_predict)

LIGHTGBM = SourceKind(name="lightgbm", detected_by="an MLflow lightgbm flavor (scikit-learn API model)",
                      operations=__name__, from_flavors=flavor_model_dir("lightgbm"),
                      own_routes=("onnxmltools_lightgbm",))


def load_model(state: dict[str, Any], model_file: str, custom_object_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    import lightgbm
    import mlflow.lightgbm

    model = mlflow.lightgbm.load_model(model_file)
    return describe_boosting_model(state, model, lightgbm, lambda: split_thresholds(model.booster_))


def split_thresholds(booster: Any) -> SplitThresholds:
    """The float64 thresholds of the numerical (`<=`) splits, per feature."""
    splits: dict[int, list[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            if node["decision_type"] == "<=":
                splits.setdefault(node["split_feature"], []).append(node["threshold"])
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return {feature: np.asarray(values, dtype=np.float64) for feature, values in splits.items()}
