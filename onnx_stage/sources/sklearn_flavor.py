"""scikit-learn estimators and pipelines from an MLflow `sklearn` flavor, converted by skl2onnx. skl2onnx picks each
tree's float32 threshold so that every float32 input takes scikit-learn's branch (sklearn_threshold), so no split
rounds differently. This module is also the operations module the child serves for the kind: tabular.py's
operations with this load_model."""
from __future__ import annotations

from typing import Any

from onnx_stage.sources.kind import SourceKind, flavor_model_dir
from onnx_stage.sources.tabular import (TabularModel, convert, describe, explain_mismatch,  # noqa: F401
                                        input_hints, layer_outputs, predict, time_predict)

SKLEARN = SourceKind(name="sklearn", detected_by="an MLflow sklearn flavor (estimator or pipeline)",
                     operations=__name__, from_flavors=flavor_model_dir("sklearn"), own_routes=("skl2onnx",),
                     native_runtime="scikit-learn")


def load_model(state: dict[str, Any], model_file: str, custom_object_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    import mlflow.sklearn
    import sklearn
    from sklearn.base import is_classifier

    estimator = mlflow.sklearn.load_model(model_file)
    if not hasattr(estimator, "n_features_in_"):
        raise ValueError(f"the {type(estimator).__name__} in {model_file} does not say how many features it takes "
                         "(no n_features_in_): log a fitted scikit-learn estimator or pipeline")
    model = TabularModel(estimator, estimator, int(estimator.n_features_in_), is_classifier(estimator))
    return describe(state, model, {"scikit-learn": sklearn.__version__}, lambda: {})
