"""tf2onnx on a SavedModel's serving signature (what `python -m tf2onnx.convert --saved-model` does), with the
ONNX inputs named and ordered like the signature's."""
import onnx
import tensorflow as tf
import tf2onnx
from tf2onnx import tf_loader
from tf2onnx.convert import _convert_common

from onnx_stage.routes import reorder_values, tf2onnx_handlers  # noqa: F401  (handlers: ops tf2onnx lacks)
from onnx_stage.sources.saved_model import SERVING_SIGNATURE, SavedModelSource


def convert(model: SavedModelSource, opset: int) -> onnx.ModelProto:
    graph_def, inputs, outputs, tensors_to_rename = tf_loader.from_saved_model(
        model.path, None, None, tag=["serve"], signatures=[SERVING_SIGNATURE], return_tensors_to_rename=True)
    with tf.device("/cpu:0"):
        proto, _ = _convert_common(graph_def, name=model.path, opset=opset, input_names=inputs,
                                   output_names=outputs, tensors_to_rename=tensors_to_rename)
    reorder_values(proto.graph.input, model.input_names)
    return proto


def versions() -> dict[str, str]:
    return {"tf2onnx": tf2onnx.__version__, "tensorflow": tf.__version__}
