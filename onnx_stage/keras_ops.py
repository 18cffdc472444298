"""The operations the Keras child process serves (see keras_worker). Imported only in that child."""
from __future__ import annotations

import ctypes
import importlib
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf

from onnx_stage.routes import ROUTES
from onnx_stage.routes.signature import input_ports, is_graph_network, output_ports
from onnx_stage.timing import time_calls

State = dict[str, Any]


def load_model(state: State, model_file: str, custom_object_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    for module in custom_object_modules:
        importlib.import_module(module)
    try:
        model = keras.models.load_model(model_file, compile=False, safe_mode=True)
    except TypeError as error:
        raise ValueError(_unregistered_class_hint(str(error)) or _one_line(error)) from None
    state["model"] = model
    return {
        "inputs": [asdict(port) for port in input_ports(model)],
        "outputs": [asdict(port) for port in output_ports(model)],
        "library_versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "weights_bytes": sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights),
    }


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
    """Try the routes in order; the first whose model passes onnx.checker and loads in onnxruntime wins.

    Reports the child's peak resident memory during the conversion (the kernel's high-water mark, reset first).
    """
    model = state["model"]
    output_names = [port.name for port in output_ports(model)]
    failures: dict[str, str] = {}
    _reset_peak_rss()
    for route in routes:
        started = time.perf_counter()
        try:
            _convert_with(route, model, opset, output_names, onnx_path)
        except Exception as error:
            failures[route] = _one_line(error)
            continue
        return {"route": route, "failures": failures, "seconds": time.perf_counter() - started,
                "route_versions": ROUTES[route].versions(), "peak_rss_bytes": _peak_rss_bytes()}
    raise RuntimeError("no converter route worked: " + "; ".join(f"{r}: {m}" for r, m in failures.items()))


def _convert_with(route: str, model: keras.Model, opset: int, output_names: list[str], onnx_path: str) -> None:
    """Convert, save, then check from the file: the in-memory proto is freed before onnxruntime loads a copy."""
    proto = ROUTES[route].convert(model, opset)
    _name_dynamic_batch(proto)
    _name_outputs_after_layers(proto, output_names)
    onnx.save_model(proto, onnx_path)
    del proto
    onnx.checker.check_model(onnx_path)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")  # a load check needs no packed copy
    ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def _reset_peak_rss() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back what loading freed, or it counts towards the peak
    Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS


def _peak_rss_bytes() -> int:
    peak_kib = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)
    return int(peak_kib) * 1024


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
    if not is_graph_network(model):
        return []  # a subclassed model's layers have no graph to compare along
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [keras.tree.flatten(layer.output)[0] for layer in layers])
    values = probe.predict_on_batch(inputs if len(inputs) > 1 else inputs[0])
    values = values if isinstance(values, (list, tuple)) else [values]
    return [{"name": layer.name, "kind": type(layer).__name__, "output": np.asarray(value),
             "parents": sorted({p.operation.name for node in layer._inbound_nodes for p in node.parent_nodes})}
            for layer, value in zip(layers, values)]


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
