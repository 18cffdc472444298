"""LightGBM models (LGBMClassifier/LGBMRegressor, or a lightgbm.train Booster) from an MLflow `lightgbm` flavor,
converted by onnxmltools' convert_lightgbm. This module is also the operations module the child serves for the kind:
tabular.py's operations with this load_model."""
from __future__ import annotations

from typing import Any

import numpy as np

from onnx_stage.sources.kind import SourceKind, flavor_model_dir
from onnx_stage.sources.tabular import (RawBooster, SplitThresholds, convert,  # noqa: F401
                                        describe_boosting_model, explain_mismatch, input_hints, layer_outputs,
                                        predict, time_predict)

LIGHTGBM = SourceKind(name="lightgbm", detected_by="an MLflow lightgbm flavor",
                      operations=__name__, from_flavors=flavor_model_dir("lightgbm"),
                      own_routes=("onnxmltools_lightgbm",), native_runtime="lightgbm")


def load_model(state: dict[str, Any], model_file: str, custom_object_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    import lightgbm
    import mlflow.lightgbm

    model = mlflow.lightgbm.load_model(model_file)
    booster = model if isinstance(model, lightgbm.Booster) else model.booster_
    return describe_boosting_model(state, model, lightgbm, raw_booster, lambda: split_thresholds(booster))


def raw_booster(booster: Any) -> RawBooster:
    """lightgbm.train's Booster: binary and multiclass objectives are classifiers (0..k-1), the others regressors."""
    dump = booster.dump_model()
    objective = dump["objective"].split()[0]
    classes = {"binary": 2, "multiclass": dump["num_class"], "multiclassova": dump["num_class"]}.get(objective)
    return RawBooster(booster.predict, booster.num_feature(), classes)


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
