"""A registry consumer changes the model URI and nothing else: every request form answered by the source version
is answered alike by its ONNX twin, through mlflow.pyfunc and through a real `mlflow models serve` over REST."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from onnx_stage.flows.convert_flow import convert_model
from onnx_stage.config import load_config
from onnx_stage.consumer import answer_differences, answer_table, answers, request_forms
from deployments.servers import BIN, free_port, launch, stop_group, wait_until_healthy

FAST = ["benchmark.enabled=false", "registry.name_template={name}-compat-onnx"]  # twins of its own
KERAS_REQUIREMENTS = ["keras", "tensorflow-cpu"]  # explicit: MLflow would infer them for seconds


def log_keras(name: str, model: object, example: object, scratch: Path) -> str:
    """mlflow.keras with an input example (signature inferred from it), as flows/train_demo.py logs: save_model into
    a folder, then log and register it (log_model(input_example=...) fails in MLflow 3.17, see train_demo)."""
    import mlflow.keras

    model_dir = scratch / name
    model_dir.mkdir()
    mlflow.keras.save_model(model, str(model_dir), input_example=example, pip_requirements=KERAS_REQUIREMENTS)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    return str(mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version)


def two_input_model() -> tuple[object, dict[str, np.ndarray]]:
    """int32 token ids of dynamic length + float features → one output."""
    import keras

    tokens, features = keras.Input((None,), dtype="int32", name="tokens"), keras.Input((4,), name="features")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(tokens))
    scores = keras.layers.Dense(3, name="scores")(keras.layers.Concatenate()([pooled, features]))
    rng = np.random.default_rng(0)
    example = {"tokens": rng.integers(0, 50, (3, 7)).astype("int32"),
               "features": rng.standard_normal((3, 4)).astype("float32")}
    return keras.Model([tokens, features], scores), example


def two_output_model() -> tuple[object, np.ndarray]:
    import keras

    pixels = keras.Input((6,), name="pixels")
    hidden = keras.layers.Dense(8, activation="relu")(pixels)
    model = keras.Model(pixels, [keras.layers.Dense(3, name="head_a")(hidden), keras.layers.Dense(3, name="head_b")(hidden)])
    return model, np.random.default_rng(1).standard_normal((3, 6)).astype("float32")


@pytest.fixture(scope="module")
def pairs(stage: str, digits_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Source version URI → twin URI for the digits MLP, a two-input, a two-output Keras model and a scikit-learn
    classifier, each logged as its user would (mlflow.keras / mlflow.sklearn with an input example)."""
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    scratch = tmp_path_factory.mktemp("sources")
    versions = {"digits-mlp": digits_model,
                "compat-two-input": log_keras("compat-two-input", *two_input_model(), scratch),
                "compat-two-output": log_keras("compat-two-output", *two_output_model(), scratch)}
    features, labels = load_iris(return_X_y=True)
    with mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression(max_iter=500).fit(features, labels), name="model",
                                 registered_model_name="compat-iris", input_example=features[:3].astype("float32"),
                                 pip_requirements=["scikit-learn"])
    versions["compat-iris"] = "1"
    config = load_config(overrides=FAST)
    return {f"models:/{name}/{version}": convert_model(model_name=name, version=version, config=config).uri
            for name, version in versions.items()}


def requests_for(source_uri: str, twin_uri: str) -> dict[str, object]:
    """The request forms for a version's own input example (its arrays, named as its signature names them, else
    as the model names its inputs, which the twin's ONNX inputs carry)."""
    model = mlflow.models.Model.load(source_uri)
    local = mlflow.artifacts.download_artifacts(source_uri)
    example = model.load_input_example(local)
    if isinstance(example, dict):
        return request_forms(list(example), [np.asarray(v) for v in example.values()])
    array = np.asarray(example.to_numpy() if isinstance(example, pd.DataFrame) else example)
    signature = model.signature  # None where MLflow could not infer one (the two-output model)
    columns = None if signature is None or signature.inputs.is_tensor_spec() else signature.inputs.input_names()
    names = [i.name for i in mlflow.pyfunc.load_model(twin_uri).get_raw_model().get_inputs()]
    return request_forms(names, [array], columns)


def test_every_pyfunc_request_form_is_answered_alike(pairs: dict[str, tuple[str, str]]) -> None:
    print("\n| model | request (mlflow.pyfunc) | source answers | twin answers |\n|---|---|---|---|")  # README matrix
    for source_uri, twin_uri in pairs.items():
        requests = requests_for(source_uri, twin_uri)
        expected = answers(mlflow.pyfunc.load_model(source_uri), requests)
        actual = answers(mlflow.pyfunc.load_model(twin_uri), requests)
        for form, source_cell, twin_cell in answer_table(expected, actual):
            print(f"| {source_uri} | {form} | {source_cell} | {twin_cell} |")
        assert [f for f, (status, _) in expected.items() if status == "ok"], f"{source_uri} answers nothing"
        assert answer_differences(expected, actual, atol=1e-4, rtol=1e-3) == [], source_uri
        for form, (status, answer) in expected.items():
            if status == "ok":  # the same Python type, checked here too, not only inside answer_differences
                assert type(actual[form][1]) is type(answer), (source_uri, form)


def test_the_digits_twin_answers_an_ndarray_with_the_source_signature(pairs: dict[str, tuple[str, str]]) -> None:
    source_uri = next(uri for uri in pairs if "digits-mlp" in uri)
    twin = mlflow.pyfunc.load_model(pairs[source_uri])
    assert twin.metadata.signature == mlflow.models.Model.load(source_uri).signature
    answer = twin.predict(np.zeros((3, 64), np.float32))
    assert isinstance(answer, np.ndarray) and answer.shape == (3, 10)
    assert twin.get_raw_model().get_inputs()[0].name == "pixels"  # the Keras input's name, not pixels:0
    description = MlflowClient().get_model_version(*pairs[source_uri].removeprefix("models:/").split("/")).description
    assert source_uri in description and "instead of" in description and "opset" in description


def rest_payloads(requests: dict[str, object]) -> dict[str, dict]:
    """The four REST request forms of `mlflow models serve`, from the pyfunc request forms."""
    by_name = {k: np.asarray(v).tolist() for k, v in requests["dict by input name"].items()}
    if "ndarray" in requests:
        frame = requests.get("DataFrame, named columns")
        rows = np.asarray(requests["ndarray"]).tolist()
        payloads = {"inputs": {"inputs": rows}, "instances": {"instances": rows}}
        if frame is not None:
            payloads["dataframe_split"] = {"dataframe_split": frame.to_dict(orient="split")}
            payloads["dataframe_records"] = {"dataframe_records": frame.to_dict(orient="records")}
        return payloads
    rows = [dict(zip(by_name, values)) for values in zip(*by_name.values())]
    return {"inputs": {"inputs": by_name}, "instances": {"instances": rows},
            "dataframe_split": {"dataframe_split": {"columns": list(by_name), "data": [list(r.values()) for r in rows]}},
            "dataframe_records": {"dataframe_records": rows}}


def invoke(port: int, payload: dict) -> tuple[int, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as error:
        return error.code, None


@pytest.fixture(scope="module")
def served(pairs: dict[str, tuple[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """`mlflow models serve` of every source and twin (from the venv, so uvicorn is on PATH), started together."""
    logs = tmp_path_factory.mktemp("serve")
    env = {"PATH": f"{BIN}:{os.environ['PATH']}"}
    with ExitStack() as stack:
        ports, processes = {}, {}
        for uri in [u for pair in pairs.items() for u in pair]:
            ports[uri] = free_port()
            log = logs / f"{uri.replace('/', '_').replace(':', '')}.log"
            processes[uri] = (launch([str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                                      "-h", "127.0.0.1", "-p", str(ports[uri])], log, env), log)
            stack.callback(stop_group, processes[uri][0].pid)
        for uri, (process, log) in processes.items():
            wait_until_healthy(f"http://127.0.0.1:{ports[uri]}/ping", process, log, timeout_seconds=240)
        yield ports


def test_every_rest_request_form_is_answered_alike(pairs: dict[str, tuple[str, str]], served: dict[str, int]) -> None:
    answered = 0
    print("\n| model | request (REST) | source | twin |\n|---|---|---|---|")  # README matrix
    for source_uri, twin_uri in pairs.items():
        for form, payload in rest_payloads(requests_for(source_uri, twin_uri)).items():
            (source_status, expected), (twin_status, actual) = invoke(served[source_uri], payload), invoke(
                served[twin_uri], payload)
            print(f"| {source_uri} | {form} | {_cell(source_status, expected)} | {_cell(twin_status, actual)} |")
            if source_status != 200:
                continue  # a form the source refuses: the twin may answer it
            answered += 1
            assert twin_status == 200, (source_uri, form)
            assert np.asarray(actual).shape == np.asarray(expected).shape, (source_uri, form)
            np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), atol=1e-4, rtol=1e-3)
    assert answered >= 8  # most forms are answered by the sources, so the comparison above is not vacuous


def _cell(status: int, predictions: object) -> str:
    return f"{status}, shape {np.asarray(predictions).shape}" if status == 200 else f"{status} (refused)"


def test_several_outputs_of_one_layer_convert_with_unique_names(stage: str, tmp_path: Path) -> None:
    import keras

    sequence = keras.Input((5, 2), name="sequence")
    output, hidden, cell = keras.layers.LSTM(4, return_state=True, name="lstm")(sequence)
    model = keras.Model(sequence, [keras.layers.Dense(2, name="head")(output), output, hidden, cell])
    model.save(tmp_path / "lstm_states.keras")

    twin = convert_model(model_name="lstm-states", path=str(tmp_path / "lstm_states.keras"),
                         config=load_config(overrides=FAST))

    session = mlflow.pyfunc.load_model(twin.uri).get_raw_model()
    assert [o.name for o in session.get_outputs()] == ["head", "lstm/0", "lstm/1", "lstm/2"]
    x = np.random.default_rng(3).standard_normal((2, 5, 2)).astype("float32")
    for expected, actual in zip(model(x), session.run(None, {"sequence": x})):
        np.testing.assert_allclose(actual, keras.ops.convert_to_numpy(expected), atol=1e-5)
