"""ONNX files written one tensor at a time read back as the same model; big ones go to external data."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_stage.onnx_files import append_external_tensor, data_file_of, save_onnx


def _model() -> onnx.ModelProto:
    weights = [numpy_helper.from_array(np.random.default_rng(i).standard_normal((300, 300)).astype(np.float32), f"w{i}")
               for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"]), helper.make_node("MatMul", ["h0", "w1"], ["h1"]),
             helper.make_node("MatMul", ["h1", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 300])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 300])], weights,
                              doc_string="three matmuls")
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.metadata_props.add(key="k", value="v")
    return model


def test_streamed_inline_file_is_the_same_model(tmp_path: Path) -> None:
    model = _model()
    save_onnx(model, tmp_path / "m.onnx")

    assert onnx.load(str(tmp_path / "m.onnx")) == model
    assert not data_file_of(tmp_path / "m.onnx").exists()
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


def test_external_tensors_written_from_arrays_load_in_onnxruntime(tmp_path: Path) -> None:
    model, path = _model(), tmp_path / "m.onnx"
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    del model.graph.initializer[:]
    with data_file_of(path).open("wb") as data:
        for name, array in arrays.items():
            tensor = model.graph.initializer.add(name=name)
            append_external_tensor(tensor, array, data, data_file_of(path).name)
    save_onnx(model, path, external=True)

    x = np.ones((2, 300), np.float32)
    expected = x @ arrays["w0"] @ arrays["w1"] @ arrays["w2"]
    actual = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-3)
