"""skl2onnx for scikit-learn estimators and pipelines; a classifier's probabilities stay one array (no ZipMap)."""
import onnx
import skl2onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.pipeline import Pipeline

from onnx_stage.sources.tabular import INPUT, TabularModel


def convert(model: TabularModel, opset: int) -> onnx.ModelProto:
    final = model.native.steps[-1][1] if isinstance(model.native, Pipeline) else model.native
    return skl2onnx.convert_sklearn(
        model.native, initial_types=[(INPUT, FloatTensorType([None, model.n_features]))], target_opset=opset,
        options={id(final): {"zipmap": False}} if model.is_classifier else None)


def versions() -> dict[str, str]:
    return {"skl2onnx": skl2onnx.__version__}
