"""onnxmltools.convert_xgboost at convert.opset or the highest it supports (15 in 1.16)."""
import onnx
import onnxmltools
import xgboost
from onnxmltools.convert.common.data_types import FloatTensorType
from onnxmltools.convert.common.onnx_ex import get_maximum_opset_supported

from onnx_stage.sources.tabular import INPUT, TabularModel


def convert(model: TabularModel, opset: int) -> onnx.ModelProto:
    target_opset = min(opset, get_maximum_opset_supported())
    proto = onnxmltools.convert_xgboost(model.native, initial_types=[(INPUT, FloatTensorType([None, model.n_features]))],
                                        target_opset=target_opset)
    if not any(entry.domain in ("", "ai.onnx") for entry in proto.opset_import):
        # a graph of ai.onnx.ml operators only imports no standard opset; declare the one it was converted for
        proto.opset_import.append(onnx.helper.make_opsetid("", target_opset))
    return proto


def versions() -> dict[str, str]:
    return {"onnxmltools": onnxmltools.__version__, "xgboost": xgboost.__version__}
