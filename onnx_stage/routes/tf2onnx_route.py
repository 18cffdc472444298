"""tf2onnx on a traced tf.function of the model (avoids from_keras' output-name lookup)."""
import keras
import onnx
import tensorflow as tf
import tf2onnx

from onnx_stage.routes.signature import tf_tensor_specs


def convert(model: keras.Model, opset: int) -> onnx.ModelProto:
    @tf.function(input_signature=tf_tensor_specs(model))
    def serve(*inputs: tf.Tensor):  # noqa: ANN202
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=tf_tensor_specs(model), opset=opset)
    return proto


def versions() -> dict[str, str]:
    return {"tf2onnx": tf2onnx.__version__}
