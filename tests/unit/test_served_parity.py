"""Session options chosen for serving are kept only if onnxruntime at those options still matches Keras."""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_stage.config import ValidateConfig
from onnx_stage.records import BenchReport, CaseOutputs, OnnxArtifacts, ParityReport, ValidationInputs
from onnx_stage.tasks.validate import check_served_parity

TUNED = {"graph_optimization_level": 99, "intra_op_num_threads": 1, "execution_mode": "sequential"}


def _scaled_model(path: Path) -> OnnxArtifacts:
    scale = numpy_helper.from_array(np.full((1, 3), 2.0, np.float32), "scale")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "scale"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [scale])
    onnx.save_model(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), path)
    return OnnxArtifacts(onnx_path=path, json_path=path, text_path=path, route="test", opset=17, conversion_seconds=0)


def _parity(tmp_path: Path, keras_offset: float) -> tuple[ValidationInputs, ParityReport]:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    inputs = ValidationInputs.save([("generated batch 2", [x])], tmp_path / "cases.npz")
    keras = CaseOutputs.save([[2 * x + keras_offset]], tmp_path / "keras.npz")
    report = ParityReport(passed=True, atol=1e-4, rtol=1e-3, cases=[], reference_inputs=tmp_path / "cases.npz",
                          reference_outputs=tmp_path / "keras.npz", keras_outputs=keras)
    return inputs, report


def test_options_that_keep_parity_are_registered(tmp_path: Path) -> None:
    inputs, parity = _parity(tmp_path, keras_offset=0.0)
    bench = BenchReport(session_options=TUNED)
    assert check_served_parity(_scaled_model(tmp_path / "m.onnx"), inputs, parity, bench, ValidateConfig()) == bench


def test_options_that_break_parity_are_dropped_with_the_figures(tmp_path: Path) -> None:
    inputs, parity = _parity(tmp_path, keras_offset=0.5)
    checked = check_served_parity(_scaled_model(tmp_path / "m.onnx"), inputs, parity,
                                  BenchReport(session_options=TUNED), ValidateConfig())
    assert checked.session_options == {}
    assert "break parity with the source model (generated batch 2 / y: max|Δ|=0.5)" in checked.tuning_refused
