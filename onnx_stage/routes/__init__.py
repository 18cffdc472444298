"""Converter routes, one small module each, registered in ROUTES in the order of this import list.

A route turns a loaded Keras model into an ONNX ModelProto with a dynamic batch dimension. Adding a
route: write a module with `convert(model, opset) -> onnx.ModelProto` and `versions() -> dict`, and
list it here. Imported only in the Keras child process.
"""
from types import ModuleType

from onnx_stage.routes import keras_export, onnxmltools_route, tf2onnx_handlers, tf2onnx_lean, tf2onnx_route  # noqa: F401

ROUTES: dict[str, ModuleType] = {
    "onnxmltools": onnxmltools_route,
    "keras_export": keras_export,
    "tf2onnx": tf2onnx_route,
    "tf2onnx_lean": tf2onnx_lean,
}
