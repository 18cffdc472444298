"""What the scikit-learn, LightGBM and XGBoost kinds share in the child process: the interface (one float32 input
of n features; a classifier's `label` and `probabilities`, a regressor's `variable`), the reference outputs and
timings from the native predict_proba / predict, and the explanation of a float32 tree disagreeing.

Reference outputs are cast to what the ONNX model computes (float32 probabilities and values, int64 labels), so
parity is judged in float32. ONNX tree ensembles hold their split thresholds in float32, while LightGBM compares
with float64 thresholds: a value exactly on a threshold that float32 rounds up takes the other branch in ONNX.
explain_mismatch finds such values, and validation fails on them, rather than widening tolerances to hide them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from onnx_stage.timing import time_calls

INPUT = "input"
CLASSIFIER_OUTPUTS, REGRESSOR_OUTPUTS = ["label", "probabilities"], ["variable"]
State = dict[str, Any]
SplitThresholds = dict[int, np.ndarray]  # input feature → the float64 thresholds of the splits on it


@dataclass(frozen=True)
class TabularModel:
    estimator: Any  # what validation and the benchmark call: predict, predict_proba
    native: Any  # what the route converts: the same estimator, or the raw booster behind a RawBooster
    n_features: int
    is_classifier: bool


class RawBooster:
    """A booster from lightgbm.train / xgboost.train behind the scikit-learn calls validation makes: probabilities
    as the converters output them (a binary model's as two columns), labels as their argmax."""

    def __init__(self, predict_raw: Callable[[np.ndarray], np.ndarray], n_features: int, classes: int | None) -> None:
        self._predict_raw, self.n_features_in_ = predict_raw, n_features
        self.classes_ = np.arange(classes) if classes else None

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        scores = self._predict_raw(features)
        return np.column_stack([1 - scores, scores]) if scores.ndim == 1 else scores

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.classes_ is None:
            return self._predict_raw(features)
        return self.classes_[self.predict_proba(features).argmax(axis=1)]


def describe(state: State, model: TabularModel, library_versions: dict[str, str],
             split_thresholds: Callable[[], SplitThresholds]) -> dict[str, Any]:
    """Remember the loaded model in the child's state and return its interface for SourceModel. split_thresholds
    gives the float64 thresholds whose float32 rounding could change a decision ({} when the converter keeps every
    decision, or the framework splits in float32 itself)."""
    classes = np.asarray(model.estimator.classes_) if model.is_classifier else None
    if classes is not None and not np.issubdtype(classes.dtype, np.number):
        raise ValueError(f"the classifier's class labels are {classes.dtype} ({list(classes)[:3]}...); only numeric "
                         "class labels are supported: encode them as integers (sklearn.preprocessing.LabelEncoder) "
                         "before training")
    state.update(model=model, split_thresholds=split_thresholds)
    outputs = ([{"name": "label", "shape": [None], "dtype": "int64"},
                {"name": "probabilities", "shape": [None, len(classes)], "dtype": "float32"}] if model.is_classifier
               else [{"name": "variable", "shape": [None, 1], "dtype": "float32"}])
    return {"inputs": [{"name": INPUT, "shape": [None, model.n_features], "dtype": "float32"}], "outputs": outputs,
            "library_versions": library_versions, "weights_bytes": None}


def describe_boosting_model(state: State, model: Any, framework: ModuleType, raw_booster: Callable[[Any], RawBooster],
                            split_thresholds: Callable[[], SplitThresholds]) -> dict[str, Any]:
    """describe() for a LightGBM or XGBoost model: its scikit-learn API model, or a raw booster seen through one."""
    from sklearn.base import is_classifier

    if isinstance(model, framework.Booster):
        estimator = raw_booster(model)
        tabular = TabularModel(estimator, model, estimator.n_features_in_, estimator.classes_ is not None)
    else:
        tabular = TabularModel(model, model, int(model.n_features_in_), is_classifier(model))
    return describe(state, tabular, {framework.__name__: framework.__version__}, split_thresholds)


def convert(state: State, routes: list[str], opset: int, onnx_path: str) -> dict[str, Any]:
    from onnx_stage.routes import convert_first_working

    model: TabularModel = state["model"]
    names = CLASSIFIER_OUTPUTS if model.is_classifier else REGRESSOR_OUTPUTS
    return convert_first_working(model, routes, opset, onnx_path, [INPUT], names)


def predict(state: State, inputs: list[np.ndarray]) -> list[np.ndarray]:
    model: TabularModel = state["model"]
    features = inputs[0]
    if model.is_classifier:
        probabilities = np.asarray(model.estimator.predict_proba(features))
        return [np.asarray(model.estimator.predict(features)).astype(np.int64), probabilities.astype(np.float32)]
    return [np.asarray(model.estimator.predict(features), dtype=np.float32).reshape(len(features), -1)]


def time_predict(state: State, inputs: list[np.ndarray], warmup_runs: int, min_runs: int,
                 min_seconds: float) -> list[float]:
    """Seconds per call of the native predict_proba (classifiers: what computes the probabilities) or predict."""
    model: TabularModel = state["model"]
    native = model.estimator.predict_proba if model.is_classifier else model.estimator.predict
    features = inputs[0]
    return time_calls(lambda: native(features), warmup_runs, min_runs, min_seconds)


def layer_outputs(state: State, inputs: list[np.ndarray]) -> list[dict[str, Any]]:
    return []  # no layers


def input_hints(state: State) -> list[dict[str, Any]]:
    return [{}]


def explain_mismatch(state: State, inputs: list[np.ndarray]) -> str:
    features = inputs[0].astype(np.float32)
    hits = values_on_rounded_up_thresholds(features, state["split_thresholds"]())
    if not hits:
        return ("no input value sits on a split threshold that float32 rounds up, so split rounding does not explain "
                "the difference")
    row, feature, value, threshold = hits[0]
    rows = len({hit[0] for hit in hits})
    return (f"{rows} of {len(features)} input rows hold a value exactly on a split threshold that float32 rounds up "
            f"(row {row}: feature {feature} = {value!r}, split at {threshold!r} in float64): the ONNX tree ensemble "
            "compares in float32 and takes the other branch there, the source model in float64; this is float32 "
            "rounding, not a conversion bug, but the twin would answer such inputs differently")


def values_on_rounded_up_thresholds(features: np.ndarray, thresholds: SplitThresholds) -> list[tuple[int, int, float, float]]:
    """(row, feature, value, float64 threshold) where `value <= threshold` differs from the float32 comparison.

    For a float32 value x and a threshold t that float32 rounds to t32, `x <= t` and `x <= t32` differ only when
    t32 > t and x == t32 (when t32 < t, no float32 lies in (t32, t], as t32 is the float32 nearest to t)."""
    hits = []
    for feature, split_values in sorted(thresholds.items()):
        rounded = split_values.astype(np.float32)
        rounded_up = rounded.astype(np.float64) > split_values
        by_rounded = dict(zip(rounded[rounded_up].tolist(), split_values[rounded_up].tolist()))
        for row in np.flatnonzero(np.isin(features[:, feature], rounded[rounded_up])):
            value = float(features[row, feature])
            hits.append((int(row), int(feature), value, by_rounded[value]))
    return sorted(hits)
