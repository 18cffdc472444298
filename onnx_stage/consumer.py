"""The consumer contract: the request forms a registry consumer sends through `mlflow.pyfunc`, the answers of the
source version and of its twin, and the rule that they must agree (same type, shape and values within tolerance).

`source_answers` runs in the child process (it loads the source's pyfunc: TensorFlow, scikit-learn, ...); the
twin's answers are taken in the flow process after registering, and `answer_differences` judges the pair.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onnx_stage.parity import close_enough
from onnx_stage.records import FULL_PRECISION, RegisteredTwin, SourceModel

Answer = tuple[str, Any]  # ("ok", the answer) or ("error", its one-line message)

ANSWER_FORMS = {"keras": "keras", "h5": "keras", "saved_model": "tensorflow_module",
                "sklearn": "tabular", "lightgbm": "tabular", "xgboost": "tabular"}


def answer_form(kind: str, flavors: dict[str, dict]) -> str:
    """How the source's pyfunc shapes its answers (see onnx_twin_pyfunc): by source kind, and for TensorFlow
    models by the MLflow flavor's model type (mlflow.tensorflow wraps Keras models, tf.Modules and TF1
    estimator SavedModels each its own way). A model file answers as the flavor it would be logged with."""
    model_type = flavors.get("tensorflow", {}).get("model_type")
    if ANSWER_FORMS[kind] == "keras" and "keras" not in flavors and model_type == "keras":
        return "tensorflow_keras"
    if kind == "saved_model" and model_type == "tf1-estimator":
        return "tensorflow_signature"
    return ANSWER_FORMS[kind]


def consumer_uris(source: SourceModel, twin: RegisteredTwin) -> tuple[str, str]:
    """The model URI a consumer loads today and the one it loads instead (by alias where the source has one; a
    variant's alias carries its kind: champion-fp16)."""
    suffix = "" if twin.variant == FULL_PRECISION else f"-{twin.variant}"
    if source.aliases:
        return f"models:/{source.ref.name}@{source.aliases[0]}", f"models:/{twin.name}@{source.aliases[0]}{suffix}"
    if source.registry_version:
        return f"models:/{source.ref.name}/{source.registry_version}", twin.uri
    return str(source.ref.path), twin.uri


def request_forms(input_names: list[str], reference: list[np.ndarray],
                  column_names: list[str] | None = None) -> dict[str, Any]:
    """Every request form a consumer may send for these inputs, built from the reference arrays.

    Single input: ndarray, list, and for a 2-D input a DataFrame with unnamed columns and one with named columns
    (the source signature's column names, else x0, x1, ...); every model: a dict keyed by input name; several
    inputs: a list of arrays in input order."""
    forms: dict[str, Any] = {"dict by input name": dict(zip(input_names, reference))}
    if len(reference) > 1:
        forms["list of arrays"] = list(reference)
        return forms
    (array,) = reference
    forms.update({"ndarray": array, "list": array.tolist()})
    if array.ndim == 2:
        names = column_names if column_names and len(column_names) == array.shape[1] else [
            f"x{i}" for i in range(array.shape[1])]
        forms.update({"DataFrame": pd.DataFrame(array), "DataFrame, named columns": pd.DataFrame(array, columns=names)})
    return forms


def answers(model: Any, requests: dict[str, Any]) -> dict[str, Answer]:
    """`model.predict` on every request; a request it refuses is answered by its error's first line."""
    results: dict[str, Answer] = {}
    for form, request in requests.items():
        try:
            results[form] = ("ok", _as_numpy(model.predict(request)))
        except Exception as error:  # a refused request form is an answer too: the twin must refuse it alike or do better
            results[form] = ("error", f"{type(error).__name__}: {next(iter(str(error).splitlines()), '')[:200]}")
    return results


def _as_numpy(answer: Any) -> Any:
    """TensorFlow tensors in an answer (mlflow.tensorflow's tf.Module wrapper returns them) as the numpy arrays
    they hold: the twin answers without TensorFlow, and a consumer reads both alike (np.asarray)."""
    if isinstance(answer, dict):
        return {key: _as_numpy(value) for key, value in answer.items()}
    if isinstance(answer, list):
        return [_as_numpy(value) for value in answer]
    return answer.numpy() if hasattr(answer, "numpy") and not isinstance(answer, np.ndarray) else answer


def source_answers(state: dict[str, Any], model_dir: str, requests: dict[str, Any]) -> dict[str, Answer]:
    """Child operation: the source version's own pyfunc on every request form."""
    import mlflow

    return answers(mlflow.pyfunc.load_model(model_dir), requests)


def answer_differences(source: dict[str, Answer], twin: dict[str, Answer], atol: float, rtol: float) -> list[str]:
    """One line per request form the twin answers otherwise than the source: an error where the source answered,
    another type, shape, index or columns, or values beyond atol + rtol·|source|, NaN/inf never equal. A form the
    source refuses may be answered by the twin (it accepts more)."""
    differences = []
    for form, (status, expected) in source.items():
        twin_status, actual = twin[form]
        if status == "error":
            continue
        if twin_status == "error":
            differences.append(f"{form}: the source answers {_describe(expected)}, the twin fails: {actual}")
        elif problem := _difference(expected, actual, atol, rtol):
            differences.append(f"{form}: {problem}")
    return differences


def _difference(expected: Any, actual: Any, atol: float, rtol: float) -> str | None:
    if type(expected) is not type(actual):
        return f"the source answers {_describe(expected)}, the twin {_describe(actual)}"
    if isinstance(expected, dict):
        if set(expected) != set(actual):  # a dict's order is no part of the answer (a SavedModel sorts its outputs)
            return f"the source answers keys {sorted(expected)}, the twin {sorted(actual)}"
        return next((f"[{k!r}] {p}" for k in expected if (p := _difference(expected[k], actual[k], atol, rtol))), None)
    if isinstance(expected, (list, tuple)) and not _is_numeric_nest(expected):
        if len(expected) != len(actual):
            return f"the source answers {len(expected)} items, the twin {len(actual)}"
        return next((f"[{i}] {p}" for i, (e, a) in enumerate(zip(expected, actual))
                     if (p := _difference(e, a, atol, rtol))), None)
    if isinstance(expected, pd.DataFrame):
        if not (expected.index.equals(actual.index) and list(expected.columns) == list(actual.columns)):
            return "the DataFrames' index or columns differ"
    expected_array, actual_array = _numeric(expected), _numeric(actual)
    if expected_array.shape != actual_array.shape:
        return f"the source answers shape {expected_array.shape}, the twin {actual_array.shape}"
    if not close_enough(expected_array, actual_array, atol, rtol):
        return f"values differ: max|Δ|={np.abs(expected_array - actual_array).max():.3g} (atol={atol:g}, rtol={rtol:g})"
    return None


def answer_table(source: dict[str, Answer] | None, twin: dict[str, Answer]) -> list[tuple[str, str, str]]:
    """(request form, what the source answers, what the twin answers) per form, for the run summary; the source
    column is "—" for a model file, which has no pyfunc."""
    def cell(answer: Answer | None) -> str:
        if answer is None:
            return "—"
        status, value = answer
        return "refused" if status == "error" else _describe(value).removeprefix("a ")
    return [(form, cell((source or {}).get(form)), cell(answer)) for form, answer in twin.items()]


def _is_numeric_nest(value: list | tuple) -> bool:
    """A list of numbers or of equal-length lists of numbers (a `tolist()` answer), not a list of arrays."""
    return not any(isinstance(item, (np.ndarray, pd.DataFrame, dict)) for item in value)


def _numeric(value: Any) -> np.ndarray:
    return np.asarray(value.to_numpy() if isinstance(value, (pd.DataFrame, pd.Series)) else value, dtype=np.float64)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"a {type(value).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def tabular_answer(expected: np.ndarray, outputs: dict[str, np.ndarray], atol: float, rtol: float) -> dict[str, str]:
    """Which ONNX output, as is, raveled or by its last column, is what the source's pyfunc answers (`expected`,
    the answer to an ndarray request; `outputs`, the source model's outputs on the same rows by ONNX output name).

    Raises:
        ValueError: no output matches; names the answer's shape and the outputs tried.
    """
    transforms = {"identity": lambda v: v, "ravel": np.ravel,
                  "last_column": lambda v: v[:, -1] if v.ndim == 2 else np.full(0, np.nan)}
    expected = np.asarray(expected, dtype=np.float64)
    for name, value in outputs.items():
        for transform, apply in transforms.items():
            candidate = np.asarray(apply(value), dtype=np.float64)
            if candidate.shape == expected.shape and close_enough(expected, candidate, atol, rtol):
                return {"output": name, "transform": transform}
    tried = ", ".join(f"{name} {value.shape}" for name, value in outputs.items())
    raise ValueError(f"the source's pyfunc answers shape {expected.shape}, which no ONNX output ({tried}) reproduces")


def read_outputs(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}
