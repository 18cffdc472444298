"""The original article's route: onnxmltools.convert_keras (which delegates to tf2onnx)."""
import keras
import onnx
import onnxmltools


def convert(model: keras.Model, opset: int) -> onnx.ModelProto:
    # onnxmltools asks tf2onnx to order outputs by Keras 3's internal tensor names ("keras_tensor_7"), which
    # tf2onnx cannot map back (KeyError); with no output_names it keeps the traced function's own order.
    model.output_names = None
    return onnxmltools.convert_keras(model, name=model.name, target_opset=opset)


def versions() -> dict[str, str]:
    import tf2onnx

    return {"onnxmltools": onnxmltools.__version__, "tf2onnx": tf2onnx.__version__}
