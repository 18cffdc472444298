"""What the twin's MLflow model declares, decided before validation ends: signature and input cases."""
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import Model
from onnx import TensorProto, helper, numpy_helper

from onnx_stage.onnx_files import data_file_of, save_onnx
from onnx_stage.records import ModelRef, OnnxArtifacts, SourceModel, TensorSpec, ValidationInputs
from onnx_stage.tasks.register import onnx_signature, package_model, save_input_example


def test_signature_follows_the_graph_with_dynamic_dimensions_as_minus_one() -> None:
    tokens = helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", "length"])
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 8, 8, 3])
    label = helper.make_tensor_value_info("label", TensorProto.FLOAT, ["batch", 10])
    weight = numpy_helper.from_array(np.zeros((3,), np.float32), "weight")
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["label"])], "g",
                              [tokens, image, helper.make_tensor_value_info("weight", TensorProto.FLOAT, [3])],
                              [label], initializer=[weight])
    signature = onnx_signature(helper.make_model(graph))

    assert signature.inputs.input_names() == ["tokens", "image"]  # an initializer listed as input is no input
    assert [(s.type, s.shape) for s in signature.inputs.inputs] == [(np.dtype("int32"), (-1, -1)),
                                                                     (np.dtype("float32"), (-1, 8, 8, 3))]
    assert signature.outputs.inputs[0].shape == (-1, 10)


def test_validation_inputs_round_trip_in_order(tmp_path: Path) -> None:
    cases = [("input example", [np.ones((1, 2)), np.arange(3)]), ("generated batch 4", [np.zeros((4, 2)), np.arange(12)])]
    saved = ValidationInputs.save(cases, tmp_path / "cases.npz")

    assert [label for label, _ in saved.cases()] == ["input example", "generated batch 4"]
    for (_, expected), (_, actual) in zip(cases, saved.cases()):
        assert all(np.array_equal(e, a) for e, a in zip(expected, actual))


def test_a_model_with_external_data_is_packaged_by_linking_its_data_file(tmp_path: Path) -> None:
    weight = np.arange(4096, dtype=np.float32).reshape(64, 64)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
                              [numpy_helper.from_array(weight, "w")])
    onnx_path = tmp_path / "onnx" / "model.onnx"
    onnx_path.parent.mkdir()
    save_onnx(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), onnx_path,
              external=True)
    artifacts = OnnxArtifacts(onnx_path=onnx_path, json_path=onnx_path, text_path=onnx_path, route="test", opset=17,
                              conversion_seconds=0)
    x = np.ones((2, 64), np.float32)
    inputs = ValidationInputs.save([("generated batch 2", [x])], tmp_path / "cases.npz")

    source = SourceModel(ref=ModelRef(name="m", path=str(onnx_path)), artifact_dir=onnx_path, model_file=onnx_path,
                         kind="keras", sha256="0",
                         inputs=[TensorSpec(name="x", shape=[None, 64], dtype="float32")],
                         outputs=[TensorSpec(name="y", shape=[None, 64], dtype="float32")])

    model_dir = package_model(source, artifacts, save_input_example(source, inputs, tmp_path), tmp_path)

    data = model_dir / "model.onnx.data"
    assert data.stat().st_ino == data_file_of(onnx_path).stat().st_ino  # linked, not rewritten
    assert (model_dir / "model.onnx").stat().st_size < weight.nbytes
    assert Model.load(str(model_dir)).model_size_bytes > weight.nbytes
    np.testing.assert_allclose(mlflow.pyfunc.load_model(str(model_dir)).predict({"x": x}), x @ weight)
