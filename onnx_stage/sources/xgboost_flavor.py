"""XGBoost models (XGBClassifier/XGBRegressor, or an xgboost.train Booster) from an MLflow `xgboost` flavor,
converted by onnxmltools' convert_xgboost. XGBoost keeps its split thresholds in float32, as ONNX does, so no split
rounds differently. This module is also the operations module the child serves for the kind: tabular.py's
operations with this load_model."""
from __future__ import annotations

import json
from typing import Any

from onnx_stage.sources.kind import SourceKind, flavor_model_dir
from onnx_stage.sources.tabular import (RawBooster, convert, describe_boosting_model,  # noqa: F401
                                        explain_mismatch, input_hints, layer_outputs, predict, time_predict)

XGBOOST = SourceKind(name="xgboost", detected_by="an MLflow xgboost flavor",
                     operations=__name__, from_flavors=flavor_model_dir("xgboost"),
                     own_routes=("onnxmltools_xgboost",), native_runtime="xgboost")


def load_model(state: dict[str, Any], model_file: str, custom_object_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    import mlflow.xgboost
    import xgboost

    return describe_boosting_model(state, mlflow.xgboost.load_model(model_file), xgboost, raw_booster, lambda: {})


def raw_booster(booster: Any) -> RawBooster:
    """xgboost.train's Booster: binary:logistic and multi:softprob are classifiers (0..k-1), reg:* regressors."""
    import xgboost

    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    if objective not in ("binary:logistic", "multi:softprob") and not objective.startswith("reg:"):
        raise ValueError(f"an xgboost Booster with objective {objective!r} has no probabilities or values to compare "
                         "with: train with binary:logistic, multi:softprob or a reg: objective")
    classes = {"binary:logistic": 2, "multi:softprob": int(learner["learner_model_param"]["num_class"])}.get(objective)
    return RawBooster(lambda features: booster.predict(xgboost.DMatrix(features)), booster.num_features(), classes)
