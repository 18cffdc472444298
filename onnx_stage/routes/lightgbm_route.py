"""onnxmltools.convert_lightgbm at convert.opset or the highest it supports (15 in 1.16); a classifier's
probabilities stay one array (no ZipMap)."""
import lightgbm
import onnx
import onnxmltools
from onnxmltools.convert.common.data_types import FloatTensorType
from onnxmltools.convert.common.onnx_ex import get_maximum_opset_supported

from onnx_stage.sources.tabular import INPUT, TabularModel


def convert(model: TabularModel, opset: int) -> onnx.ModelProto:
    proto = onnxmltools.convert_lightgbm(model.native, initial_types=[(INPUT, FloatTensorType([None, model.n_features]))],
                                         target_opset=min(opset, get_maximum_opset_supported()), zipmap=False)
    for output in proto.graph.output:  # it declares the label output with a batch of 1; its batch is the input's
        output.type.tensor_type.shape.dim[0].ClearField("dim_value")
    return proto


def versions() -> dict[str, str]:
    return {"onnxmltools": onnxmltools.__version__, "lightgbm": lightgbm.__version__}
