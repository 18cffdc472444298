"""The operations the child process serves for Keras sources (.keras, .h5; see keras_worker and sources/).
Imported only in that child."""
from __future__ import annotations

import contextlib
import importlib
import re
import threading
from dataclasses import asdict
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from onnx_stage.keras_checks import refuse_unconvertible
from onnx_stage.routes import convert_first_working, one_line
from onnx_stage.routes.signature import input_ports, is_graph_network, output_ports
from onnx_stage.timing import time_calls

State = dict[str, Any]
# Imported on a thread once the model is loaded, while the parent chooses the validation inputs: at the child's
# start they came after TensorFlow, on the path to the loaded model (~0.1 s)
CONVERTER_MODULES = ("onnx_stage.keras_layers", "onnx_stage.routes.tf2onnx_handlers", "onnx_stage.routes.tf2onnx_lean",
                     "onnx_stage.routes.onnxmltools_route", "onnx_stage.routes.keras_export",
                     "onnx_stage.routes.tf2onnx_route")


def load_model(state: State, model_file: str, custom_object_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    for module in custom_object_modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"custom object module {module!r} cannot be imported ({error}): install it where the "
                             "stage runs or fix convert.custom_object_modules") from None
    try:
        model = keras.models.load_model(model_file, compile=False, safe_mode=True)
    except TypeError as error:
        raise ValueError(_unregistered_class_hint(str(error)) or one_line(error)) from None
    refuse_unconvertible(model.weights, input_ports(model))
    state["model"] = model
    threading.Thread(target=_import_converters, daemon=True).start()
    return {
        "inputs": [asdict(port) for port in input_ports(model)],
        "outputs": [asdict(port) for port in output_ports(model)],
        "library_versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "weights_bytes": sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights),
    }


def _import_converters() -> None:
    for module in CONVERTER_MODULES:
        with contextlib.suppress(Exception):  # an import error surfaces where the module is used
            importlib.import_module(module)


def _unregistered_class_hint(message: str) -> str | None:
    """Keras' 'Could not locate class' error, reduced to the class, its module and the fix."""
    missing = re.search(r"Could not locate class '([^']+)'", message)
    if not missing:
        return None
    module = re.search(r"'module': '([^']+)', 'class_name': '" + re.escape(missing.group(1)), message)
    where = f" (defined in module {module.group(1)!r})" if module else ""
    return (f"layer or model class {missing.group(1)!r}{where} is not registered with Keras: decorate it with "
            "@keras.saving.register_keras_serializable() and list its module in convert.custom_object_modules "
            "so the Keras child imports it before loading")


def convert(state: State, routes: list[str], opset: int, onnx_path: str) -> dict[str, Any]:
    """Refuse, naming the layer, what no route can convert faithfully; else the routes in order, with the layers ONNX
    lacks an op for lowered to ops it has (keras_layers)."""
    from onnx_stage.keras_layers import lowered_layers, refuse_unrepresentable_layers
    from onnx_stage.routes import tf2onnx_handlers  # noqa: F401  (ops tf2onnx lacks; every Keras route goes through it)
    model = state["model"]
    refuse_unrepresentable_layers(model, opset)
    with lowered_layers():
        return convert_first_working(model, routes, opset, onnx_path, [port.name for port in input_ports(model)],
                                     [port.name for port in output_ports(model)])


def predict(state: State, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The reference outputs validation compares with: an eager call, because predict_on_batch traces a graph
    for the first batch size and again for the second (MobileNetV2: 3.6 s for batch 1 + 16 vs 1.7 s eager)."""
    outputs = state["model"](inputs if len(inputs) > 1 else inputs[0], training=False)
    return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(outputs)]


def time_predict(state: State, inputs: list[np.ndarray], warmup_runs: int, min_runs: int,
                 min_seconds: float) -> list[float]:
    """Seconds per call of the compiled path (predict_on_batch), the fair Keras baseline."""
    model, batch = state["model"], inputs if len(inputs) > 1 else inputs[0]
    return time_calls(lambda: model.predict_on_batch(batch), warmup_runs, min_runs, min_seconds)


def explain_mismatch(state: State, inputs: list[np.ndarray]) -> None:
    return None  # validation localises a Keras mismatch layer by layer (layer_outputs)


def layer_outputs(state: State, inputs: list[np.ndarray]) -> list[dict[str, Any]]:
    """Every top-level layer's (first) output on `inputs`, in topological order, with its parent layers."""
    model = state["model"]
    if not is_graph_network(model):
        return []  # a subclassed model's layers have no graph to compare along
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [keras.tree.flatten(layer.output)[0] for layer in layers])
    values = probe.predict_on_batch(inputs if len(inputs) > 1 else inputs[0])
    values = values if isinstance(values, (list, tuple)) else [values]
    return [{"name": layer.name, "kind": type(layer).__name__, "output": np.asarray(value),
             "parents": sorted({p.operation.name for node in layer._inbound_nodes for p in node.parent_nodes})}
            for layer, value in zip(layers, values)]


def recurrent_state_pairs(state: State) -> list[tuple[int, int]]:
    """(output index, input index) of each recurrent state the model returns and takes back (keras_layers)."""
    from onnx_stage.keras_layers import state_feedback
    return state_feedback(state["model"])


def input_hints(state: State) -> list[dict[str, Any]]:
    """Per model input, the value range its first layers imply, so generated inputs look like real ones:
    token ids inside an Embedding's vocabulary, pixels in the range a Rescaling/Normalization expects."""
    model = state["model"]
    if not is_graph_network(model):  # a subclassed model has no layer graph to read ranges from
        return [{} for _ in input_ports(model)]
    return [_range_implied_by(_consumers(model, tensor)) for tensor in model.inputs]


def _consumers(model: keras.Model, tensor: Any) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers
            if any(t is tensor for node in layer._inbound_nodes for t in keras.tree.flatten(node.input_tensors))]


def _range_implied_by(layers: list[keras.layers.Layer]) -> dict[str, Any]:
    for layer in layers:
        if isinstance(layer, keras.layers.Embedding):
            return {"low": 0, "high": layer.input_dim - 1, "reason": f"{layer.name}: vocabulary of {layer.input_dim}"}
        if isinstance(layer, keras.layers.Rescaling):
            scale, offset = float(np.mean(layer.scale)), float(np.mean(layer.offset))
            high = (1 - min(offset, 0.0)) / scale  # 1/255 → 255; 1/127.5 with offset -1 → 255
            return {"low": 0.0, "high": high, "reason": f"{layer.name}: scale {scale:.4g}, offset {offset:g}"}
        if isinstance(layer, keras.layers.Normalization) and layer.built:
            mean, std = np.asarray(layer.mean), np.sqrt(np.asarray(layer.variance))
            return {"low": float((mean - 2 * std).min()), "high": float((mean + 2 * std).max()),
                    "reason": f"{layer.name}: mean ± 2 std"}
    return {}
