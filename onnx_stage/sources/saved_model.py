"""TensorFlow SavedModel directories (saved_model.pb), as files or inside an MLflow `tensorflow` flavor of a tf.Module
(mlflow.tensorflow.log_model stores it under tf2model/). Converted by tf2onnx from the serving signature; the
reference predictions and timings are the loaded signature's. This module is also the operations module the child
serves for the kind: TensorFlow is imported only there, by load_model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_stage.sources.kind import Flavors, SourceKind
from onnx_stage.timing import time_calls

SERVING_SIGNATURE = "serving_default"
State = dict[str, Any]


def _from_flavors(location: Path, flavors: Flavors) -> Path | None:
    tensorflow = flavors.get("tensorflow", {})
    return location / tensorflow["saved_model_dir"] if tensorflow.get("model_type") == "tf2-module" else None


def _from_files(location: Path) -> list[Path]:
    return [] if location.is_file() else sorted(p.parent for p in location.rglob("saved_model.pb"))


SAVED_MODEL = SourceKind(
    name="saved_model", detected_by="a TensorFlow SavedModel directory (saved_model.pb), or an MLflow tensorflow "
                                    "flavor holding one", operations=__name__,
    from_flavors=_from_flavors, from_files=_from_files, own_routes=("tf2onnx_saved_model",),
    native_runtime="tensorflow")


@dataclass(frozen=True)
class SavedModelSource:
    """What the route converts: the directory and the serving signature's tensor names, in the order validation uses."""
    path: str
    input_names: list[str]
    output_names: list[str]


def load_model(state: State, model_file: str, custom_object_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    import tensorflow as tf

    loaded = tf.saved_model.load(model_file)
    if SERVING_SIGNATURE not in loaded.signatures:
        raise ValueError(f"the SavedModel at {model_file} has no {SERVING_SIGNATURE!r} signature (it has: "
                         f"{', '.join(loaded.signatures) or 'none'}); save it with tf.saved_model.save(module, path, "
                         "signatures=module.<tf.function with an input_signature>)")
    signature = loaded.signatures[SERVING_SIGNATURE]
    inputs = sorted(signature.structured_input_signature[1].items())
    outputs = sorted(signature.structured_outputs.items())
    state.update(loaded=loaded, signature=signature, model=SavedModelSource(
        model_file, [name for name, _ in inputs], [name for name, _ in outputs]))
    return {
        "inputs": [_spec(name, spec) for name, spec in inputs],
        "outputs": [_spec(name, spec) for name, spec in outputs],
        "library_versions": {"tensorflow": tf.__version__},
        "weights_bytes": sum(int(np.prod(v.shape)) * v.dtype.size for v in getattr(loaded, "variables", [])),
    }


def _spec(name: str, spec: Any) -> dict[str, Any]:
    return {"name": name, "shape": spec.shape.as_list(), "dtype": spec.dtype.name}


def convert(state: State, routes: list[str], opset: int, onnx_path: str) -> dict[str, Any]:
    from onnx_stage.routes import convert_first_working

    return convert_first_working(state["model"], routes, opset, onnx_path, state["model"].input_names,
                                 state["model"].output_names)


def predict(state: State, inputs: list[np.ndarray]) -> list[np.ndarray]:
    results = state["signature"](**dict(zip(state["model"].input_names, inputs)))
    return [np.asarray(results[name]) for name in state["model"].output_names]


def time_predict(state: State, inputs: list[np.ndarray], warmup_runs: int, min_runs: int,
                 min_seconds: float) -> list[float]:
    signature, feed = state["signature"], dict(zip(state["model"].input_names, inputs))
    return time_calls(lambda: signature(**feed), warmup_runs, min_runs, min_seconds)


def layer_outputs(state: State, inputs: list[np.ndarray]) -> list[dict[str, Any]]:
    return []  # a SavedModel has no layer graph to compare along


def input_hints(state: State) -> list[dict[str, Any]]:
    return [{} for _ in state["model"].input_names]


def explain_mismatch(state: State, inputs: list[np.ndarray]) -> str | None:
    return None
