"""Keras' own exporter, model.export(format="onnx"), which patches tf2onnx for numpy 2 and Keras 3."""
import tempfile
from pathlib import Path

import keras
import onnx

from onnx_stage.routes.signature import keras_input_specs


def convert(model: keras.Model, opset: int) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.onnx"
        model.export(str(path), format="onnx", input_signature=keras_input_specs(model),
                     opset_version=opset, verbose=False)
        return onnx.load(str(path))


def versions() -> dict[str, str]:
    return {"keras": keras.__version__}
