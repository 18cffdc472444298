"""What the twin's MLflow model declares, decided before validation ends: signature and input cases."""
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tasks.records import ValidationInputs
from tasks.register import onnx_signature


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
