"""The operations the Keras child process serves (see keras_worker). Imported only in that child."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf

from onnx_stage.routes import ROUTES
from onnx_stage.timing import time_calls

State = dict[str, Any]


def load_model(state: State, model_file: str) -> dict[str, Any]:
    model = keras.models.load_model(model_file, compile=False, safe_mode=True)
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        raise ValueError(
            f"{Path(model_file).name} has no defined inputs (a subclassed model that was never built); "
            "save it after calling it once on real data, or as a functional model"
        ) from None
    state["model"] = model
    return {
        "inputs": [_spec(t) for t in inputs],
        "outputs": [_spec(t) for t in outputs],
        "library_versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
    }


def convert(state: State, routes: list[str], opset: int, onnx_path: str) -> dict[str, Any]:
    """Try the routes in order; the first whose model passes onnx.checker and loads in onnxruntime wins."""
    model = state["model"]
    failures: dict[str, str] = {}
    for route in routes:
        started = time.perf_counter()
        try:
            proto = ROUTES[route].convert(model, opset)
            _name_dynamic_batch(proto)
            _name_outputs_after_layers(proto, [t._keras_history.operation.name for t in model.outputs])
            onnx.checker.check_model(proto)
            ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as error:
            failures[route] = _one_line(error)
            continue
        onnx.save_model(proto, onnx_path)
        return {"route": route, "failures": failures, "seconds": time.perf_counter() - started,
                "route_versions": ROUTES[route].versions()}
    raise RuntimeError("no converter route worked: " + "; ".join(f"{r}: {m}" for r, m in failures.items()))


def predict(state: State, inputs: list[np.ndarray]) -> list[np.ndarray]:
    outputs = state["model"].predict_on_batch(inputs if len(inputs) > 1 else inputs[0])
    return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def time_predict(state: State, inputs: list[np.ndarray], warmup_runs: int, min_runs: int,
                 min_seconds: float) -> list[float]:
    """Seconds per call of the compiled path (predict_on_batch), the fair Keras baseline."""
    model, batch = state["model"], inputs if len(inputs) > 1 else inputs[0]
    return time_calls(lambda: model.predict_on_batch(batch), warmup_runs, min_runs, min_seconds)


def _one_line(error: Exception) -> str:
    first_line = next(iter(str(error).strip().splitlines()), "")
    return f"{type(error).__name__}: {first_line[:300]}"


def _spec(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "shape": list(tensor.shape), "dtype": str(tensor.dtype)}


def _name_outputs_after_layers(proto: onnx.ModelProto, layer_names: list[str]) -> None:
    """Routes name outputs output_1 or Identity:0; consumers and per-output tolerances use the Keras names."""
    taken = {name for node in proto.graph.node for name in node.output}
    for output, new_name in zip(proto.graph.output, layer_names):
        if new_name in taken or output.name == new_name:
            continue
        for node in proto.graph.node:
            node.output[:] = [new_name if n == output.name else n for n in node.output]
            node.input[:] = [new_name if n == output.name else n for n in node.input]
        output.name = new_name


def _name_dynamic_batch(proto: onnx.ModelProto) -> None:
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def layer_outputs(state: State, inputs: list[np.ndarray]) -> list[dict[str, Any]]:
    """Every top-level layer's (first) output on `inputs`, in topological order, with its parent layers."""
    model = state["model"]
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [keras.tree.flatten(layer.output)[0] for layer in layers])
    values = probe.predict_on_batch(inputs if len(inputs) > 1 else inputs[0])
    values = values if isinstance(values, (list, tuple)) else [values]
    return [{"name": layer.name, "kind": type(layer).__name__, "output": np.asarray(value),
             "parents": sorted({p.operation.name for node in layer._inbound_nodes for p in node.parent_nodes})}
            for layer, value in zip(layers, values)]
