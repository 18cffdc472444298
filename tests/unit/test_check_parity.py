"""check_parity compares the source's outputs with the ONNX file's own: those graph optimisation computed when
they are that file's on those inputs, else a fresh onnxruntime run."""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_stage.config import ValidateConfig
from onnx_stage.records import CaseOutputs, ModelRef, OnnxArtifacts, SourceModel, TensorSpec, ValidationInputs
from onnx_stage.tasks.validate import check_parity

X = np.arange(6, dtype=np.float32).reshape(2, 3)
NUDGE = 3e-5  # inside the default tolerance, so the report shows which outputs were compared


def _doubling_model(path: Path) -> Path:
    scale = numpy_helper.from_array(np.full((1, 3), 2.0, np.float32), "scale")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "scale"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [scale])
    onnx.save_model(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _check(tmp_path: Path, touch_file_after: bool) -> float:
    """The largest |ONNX - source| check_parity reports when the recorded ONNX outputs are off by NUDGE."""
    path = _doubling_model(tmp_path / "model.onnx")
    inputs = ValidationInputs.save([("generated batch 2", [X])], tmp_path / "cases.npz")
    recorded = CaseOutputs.save([[2 * X + NUDGE]], tmp_path / "onnx_outputs.npz", inputs.path, path)
    if touch_file_after:  # another file now at the same path: the recorded outputs are not its own
        model = onnx.load(str(path))
        model.doc_string = "saved again"
        onnx.save_model(model, path)
    artifacts = OnnxArtifacts(onnx_path=path, json_path=path, text_path=path, route="test", opset=17,
                              conversion_seconds=0, validation_outputs=recorded)
    source = SourceModel(ref=ModelRef(name="m", path=str(path)), artifact_dir=path, model_file=path, kind="keras",
                         sha256="0",
                         inputs=[TensorSpec(name="x", dtype="float32", shape=[None, 3])],
                         outputs=[TensorSpec(name="y", dtype="float32", shape=[None, 3])])
    expected = CaseOutputs.save([[2 * X]], tmp_path / "keras.npz")
    report = check_parity(source, artifacts, None, ValidateConfig(), tmp_path, inputs, expected)
    assert report.passed
    return max(output.max_abs for case in report.cases for output in case.outputs)


def test_outputs_graph_optimisation_computed_on_the_same_file_and_inputs_are_compared(tmp_path: Path) -> None:
    assert np.isclose(_check(tmp_path, touch_file_after=False), NUDGE, rtol=0.05)


def test_a_file_changed_since_is_run_again(tmp_path: Path) -> None:
    assert _check(tmp_path, touch_file_after=True) == 0.0
