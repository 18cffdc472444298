"""The consumer contract in pure functions: request forms, answer comparison, the twin pyfunc's answer forms, and
the ONNX graph's input naming."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper

from onnx_stage.consumer import (answer_differences, answer_form, answer_table, answers, request_forms,
                                 tabular_answer)
from onnx_stage.onnx_twin_pyfunc import OnnxTwin
from onnx_stage.parity import close_enough
from onnx_stage.routes import name_inputs


def two_output_session() -> ort.InferenceSession:
    """y = x + 1 (n, 3) and z = x·2 (n, 3), on input `x:0` renamed to the source's `pixels`."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x:0", "one"], ["y"]), helper.make_node("Mul", ["x:0", "two"], ["z"])], "g",
        [helper.make_tensor_value_info("x:0", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("y", "z")],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    proto = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    name_inputs(proto, ["pixels"])
    onnx.checker.check_model(proto)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_inputs_take_the_source_names_and_feed_the_old_name_through_identity() -> None:
    session = two_output_session()
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    y, z = session.run(None, {"pixels": np.ones((2, 3), np.float32)})
    assert y.tolist() == [[2.0] * 3] * 2 and z.tolist() == [[2.0] * 3] * 2


def test_input_naming_refuses_a_graph_with_another_number_of_inputs() -> None:
    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="1 inputs, the source 2"):
        name_inputs(helper.make_model(graph), ["first", "second"])


def test_keras_form_answers_like_mlflow_keras() -> None:
    twin = OnnxTwin(two_output_session(), {"answer": "keras"})
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    stacked = twin.predict(x)  # keras.ops.convert_to_numpy of a list of equal shapes stacks them
    assert isinstance(stacked, np.ndarray) and stacked.shape == (2, 2, 3)
    assert twin.predict({"pixels": x}).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="2-d input"):  # pd.DataFrame(list of outputs), as mlflow.keras fails too
        twin.predict(pd.DataFrame(x, index=[7, 9]))
    with pytest.raises(ValueError, match="no input 'pixels'"):
        twin.predict({"image": x})


def test_tensorflow_signature_and_tabular_forms() -> None:
    session = two_output_session()
    x = np.zeros((2, 3), np.float32)
    by_name = OnnxTwin(session, {"answer": "tensorflow_signature"}).predict({"pixels": x})
    assert list(by_name) == ["y", "z"] and by_name["y"] == [[1.0] * 3] * 2
    assert OnnxTwin(session, {"answer": "tabular", "output": "z", "transform": "last_column"}).predict(x).shape == (2,)
    assert list(OnnxTwin(session, {"answer": "tensorflow_module"}).predict(x)) == ["y", "z"]


def test_request_forms_and_the_answer_rule() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    forms = request_forms(["pixels"], [x])
    assert set(forms) == {"ndarray", "list", "DataFrame", "DataFrame, named columns", "dict by input name"}
    assert list(request_forms(["a", "b"], [x, x])) == ["dict by input name", "list of arrays"]

    source = {"ndarray": ("ok", x), "list": ("error", "TypeError: no lists"), "DataFrame": ("ok", pd.DataFrame(x))}
    same = {"ndarray": ("ok", x + 1e-7), "list": ("ok", x), "DataFrame": ("ok", pd.DataFrame(x))}
    assert answer_differences(source, same, 1e-4, 1e-3) == []  # the twin may accept what the source refuses
    worse = {"ndarray": ("ok", {"y": x}), "list": ("error", "x"), "DataFrame": ("error", "ValueError: missing")}
    problems = answer_differences(source, worse, 1e-4, 1e-3)
    assert len(problems) == 2 and "the twin a dict" in problems[0] and "the twin fails" in problems[1]


def test_answers_record_refusals_as_one_line() -> None:
    class Picky:
        def predict(self, data: object) -> object:
            if isinstance(data, list):
                raise TypeError("lists are not\nsupported")
            return data

    assert answers(Picky(), {"list": [1], "ndarray": np.ones(1)})["list"] == ("error", "TypeError: lists are not")


def test_non_finite_values_never_pass() -> None:
    nan = np.array([np.nan, 1.0])
    assert not close_enough(nan, nan, 1.0, 1.0)
    assert not close_enough(np.array([np.inf]), np.array([np.inf]), 1.0, 1.0)
    assert close_enough(np.array([1.0]), np.array([1.00001]), 1e-4, 0)
    assert not close_enough(np.ones(2), np.ones(3), 1.0, 1.0)


def test_tabular_answer_finds_the_output_and_transform() -> None:
    outputs = {"label": np.array([0, 1, 1]), "probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])}
    assert tabular_answer(np.array([0, 1, 1]), outputs, 0, 0) == {"output": "label", "transform": "identity"}
    assert tabular_answer(np.array([0.1, 0.8, 0.6]), outputs, 1e-6, 0) == {"output": "probabilities",
                                                                          "transform": "last_column"}
    assert tabular_answer(np.array([0.5, 1.5]), {"variable": np.array([[0.5], [1.5]])}, 0, 0)["transform"] == "ravel"
    with pytest.raises(ValueError, match=r"answers shape \(4,\)"):
        tabular_answer(np.zeros(4), outputs, 0, 0)


def test_answer_form_by_kind_and_flavor() -> None:
    assert answer_form("keras", {"keras": {}}) == "keras"
    assert answer_form("keras", {}) == "keras"  # a model file: answered as mlflow.keras would
    assert answer_form("keras", {"tensorflow": {"model_type": "keras"}}) == "tensorflow_keras"
    assert answer_form("sklearn", {"sklearn": {}}) == "tabular"
    assert answer_form("saved_model", {"tensorflow": {"model_type": "tf2-module"}}) == "tensorflow_module"
    assert answer_form("saved_model", {"tensorflow": {"model_type": "tf1-estimator"}}) == "tensorflow_signature"


def test_answer_table_names_what_each_side_answers() -> None:
    twin = {"ndarray": ("ok", np.zeros((2, 10))), "dict by input name": ("error", "ValueError: no")}
    assert answer_table({"ndarray": ("ok", np.zeros((2, 10))), "dict by input name": ("error", "x")}, twin) == [
        ("ndarray", "ndarray of shape (2, 10)", "ndarray of shape (2, 10)"),
        ("dict by input name", "refused", "refused")]
    assert answer_table(None, twin)[0][1] == "—"
