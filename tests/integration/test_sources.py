"""Source kinds other than Keras 3 files through the five tasks, against a real mlflow server and real Prefect:
legacy tf-keras .h5, SavedModel directories, MLflow tensorflow/sklearn/lightgbm/xgboost flavors; the kind is
detected from the artifact. Tiny models: each flow run takes seconds."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import mlflow.lightgbm
import mlflow.xgboost
import numpy as np
import pytest
from mlflow import MlflowClient

from onnx_stage.flows.convert_flow import convert_model
from onnx_stage.config import load_config
from onnx_stage.errors import StageError

NO_BENCHMARK = ["benchmark.enabled=false"]
QUICK_BENCHMARK = ["benchmark.timed_runs=10", "benchmark.warmup_runs=2", "benchmark.min_seconds=0",
                   "benchmark.screening_runs=3", "benchmark.batch_sizes=[1,8]"]
TABULAR_REQUIREMENTS = ["scikit-learn", "lightgbm", "xgboost"]  # explicit: MLflow would infer them for seconds


def consumer_outputs(uri: str, features: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the twin by name, from the session a registry consumer's pyfunc holds (its raw model)."""
    session = mlflow.pyfunc.load_model(uri).get_raw_model()
    (model_input,) = session.get_inputs()
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {model_input.name: features})))


def versions_of(name: str) -> list:
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        return []
    return client.search_model_versions(f"name='{name}'")


@pytest.fixture(scope="module")
def tensorflow_module() -> object:
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self) -> None:
            self.kernel = tf.Variable(np.random.default_rng(0).standard_normal((6, 3)).astype("float32"))

        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="features")])
        def __call__(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            logits = tf.matmul(features, self.kernel)
            return {"scores": tf.nn.softmax(logits), "logits": logits}

    return Scorer()


def test_legacy_tf_keras_h5_file_converts(stage: str, tmp_path: Path) -> None:
    import tf_keras

    legacy = tf_keras.Sequential([tf_keras.layers.Input((5,), name="features"),
                                  tf_keras.layers.Dense(8, activation="relu"), tf_keras.layers.BatchNormalization(),
                                  tf_keras.layers.Dense(3, activation="softmax", name="probabilities")])
    legacy.save(tmp_path / "legacy.h5")
    features = np.random.default_rng(1).standard_normal((4, 5)).astype("float32")

    twin = convert_model(model_name="legacy-tf-keras", path=str(tmp_path / "legacy.h5"),
                         config=load_config(overrides=NO_BENCHMARK))

    assert twin.created
    versions = MlflowClient().get_model_version(twin.name, twin.version).tags["onnx_stage.converter_versions"]
    assert '"keras": "3.' in versions  # Keras 3 read the tf-keras file itself
    outputs = consumer_outputs(twin.uri, features)
    np.testing.assert_allclose(outputs["probabilities"], legacy.predict(features, verbose=0), atol=1e-5)


def test_saved_model_directory_converts_from_its_serving_signature(stage: str, tensorflow_module: object,
                                                                  tmp_path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(tensorflow_module, str(tmp_path / "scorer"), signatures=tensorflow_module.__call__)
    features = np.random.default_rng(2).standard_normal((3, 6)).astype("float32")

    twin = convert_model(model_name="scorer-savedmodel", path=str(tmp_path / "scorer"),
                         config=load_config(overrides=NO_BENCHMARK))

    tags = MlflowClient().get_model_version(twin.name, twin.version).tags
    assert tags["onnx_stage.converter_route"] == "tf2onnx_saved_model"
    outputs = consumer_outputs(twin.uri, features)
    expected = tensorflow_module(tf.constant(features))
    for name in ("scores", "logits"):
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), atol=1e-5)


def test_mlflow_tensorflow_flavor_version_converts(stage: str, tensorflow_module: object) -> None:
    import mlflow.tensorflow

    with mlflow.start_run():
        logged = mlflow.tensorflow.log_model(tensorflow_module, name="model", registered_model_name="scorer-tf",
                                             pip_requirements=["tensorflow-cpu"])
    twin = convert_model(model_name="scorer-tf", version=str(logged.registered_model_version),
                         config=load_config(overrides=NO_BENCHMARK))

    tags = MlflowClient().get_model_version(twin.name, twin.version).tags
    assert tags["onnx_stage.twin_of"] == f"scorer-tf/{logged.registered_model_version}"
    assert tags["onnx_stage.converter_route"] == "tf2onnx_saved_model"
    assert set(consumer_outputs(twin.uri, np.ones((2, 6), np.float32))) == {"scores", "logits"}


def log_sklearn(name: str) -> tuple[object, np.ndarray]:
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    features, labels = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(features.astype("float32"), labels)
    mlflow.sklearn.log_model(forest, name="model", registered_model_name=name, input_example=features[:8],
                             skops_trusted_types=["sklearn.tree._tree.Tree"], pip_requirements=TABULAR_REQUIREMENTS)
    return forest, features[::10].astype("float32")


def log_lightgbm(name: str) -> tuple[object, np.ndarray]:
    import lightgbm
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    booster = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1).fit(features, labels)
    mlflow.lightgbm.log_model(booster, name="model", registered_model_name=name, input_example=features[:8],
                              pip_requirements=TABULAR_REQUIREMENTS)
    return booster, features[::20].astype("float32")


def log_xgboost(name: str) -> tuple[object, np.ndarray]:
    import xgboost
    from sklearn.datasets import load_diabetes

    features, targets = load_diabetes(return_X_y=True)
    regressor = xgboost.XGBRegressor(n_estimators=20, max_depth=3).fit(features, targets)
    mlflow.xgboost.log_model(regressor, name="model", registered_model_name=name, input_example=features[:8],
                             pip_requirements=TABULAR_REQUIREMENTS)
    return regressor, features[::20].astype("float32")


@pytest.mark.parametrize(("name", "log", "route", "overrides"), [
    ("iris-forest", log_sklearn, "skl2onnx", NO_BENCHMARK),
    ("cancer-lightgbm", log_lightgbm, "onnxmltools_lightgbm", QUICK_BENCHMARK),
    ("diabetes-xgboost", log_xgboost, "onnxmltools_xgboost", NO_BENCHMARK),
])
def test_tabular_flavor_version_converts_and_matches_its_native_predict(
        stage: str, name: str, log: Callable[[str], tuple[object, np.ndarray]], route: str,
        overrides: list[str]) -> None:
    with mlflow.start_run():
        native, features = log(name)
    twin = convert_model(model_name=name, version="1", config=load_config(overrides=overrides))

    assert twin.created
    assert MlflowClient().get_model_version(twin.name, twin.version).tags["onnx_stage.converter_route"] == route
    outputs = consumer_outputs(twin.uri, features)
    if hasattr(native, "predict_proba"):
        np.testing.assert_array_equal(outputs["label"], native.predict(features))
        np.testing.assert_allclose(outputs["probabilities"], native.predict_proba(features), atol=1e-5)
    else:
        np.testing.assert_allclose(outputs["variable"][:, 0], native.predict(features), rtol=1e-4)
    source = mlflow.pyfunc.load_model(f"models:/{name}/1")
    request = features.astype(source.metadata.signature.inputs.numpy_types()[0])  # as its consumers send it
    np.testing.assert_allclose(mlflow.pyfunc.load_model(twin.uri).predict(request), source.predict(request), rtol=1e-4)
    if overrides == QUICK_BENCHMARK:
        metrics = MlflowClient().get_run(twin.run_id).data.metrics
        assert metrics["latency.onnxruntime_default.batch8.p50_ms"] > 0 and metrics["latency.lightgbm.batch8.p50_ms"] > 0


@pytest.mark.parametrize("framework", ["lightgbm", "xgboost"])
def test_a_raw_booster_version_converts_and_matches_its_predict(stage: str, framework: str) -> None:
    """lightgbm.train / xgboost.train give a Booster, not a scikit-learn API model: its predict is the probability."""
    import lightgbm
    import xgboost
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    features = features.astype("float32")
    name = f"cancer-{framework}-booster"
    with mlflow.start_run():
        if framework == "lightgbm":
            booster = lightgbm.train({"objective": "binary", "num_leaves": 8, "verbose": -1},
                                     lightgbm.Dataset(features, labels), num_boost_round=10)
            mlflow.lightgbm.log_model(booster, name="model", registered_model_name=name, input_example=features[:8],
                                      pip_requirements=TABULAR_REQUIREMENTS)
            positive = booster.predict(features[::20])
        else:
            booster = xgboost.train({"objective": "binary:logistic", "max_depth": 3}, xgboost.DMatrix(features, labels),
                                    num_boost_round=10)
            mlflow.xgboost.log_model(booster, name="model", registered_model_name=name, input_example=features[:8],
                                     pip_requirements=TABULAR_REQUIREMENTS)
            positive = booster.predict(xgboost.DMatrix(features[::20]))

    twin = convert_model(model_name=name, version="1", config=load_config(overrides=NO_BENCHMARK))

    outputs = consumer_outputs(twin.uri, features[::20])
    np.testing.assert_allclose(outputs["probabilities"][:, 1], positive, atol=1e-5)
    np.testing.assert_array_equal(outputs["label"], positive > 0.5)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(twin.uri).predict(features[::20]), positive, atol=1e-5)


def test_a_value_on_a_float32_rounded_lightgbm_split_is_reported_and_nothing_registered(stage: str) -> None:
    """LightGBM splits between the adjacent float32 values a < b at a float64 midpoint that float32 rounds up to b:
    LightGBM sends b right, the float32 ONNX tree ensemble left."""
    import lightgbm

    a = np.nextafter(np.float32(16), np.float32(32))  # odd last mantissa bit: the midpoint's tie rounds up to b
    b = np.nextafter(a, np.float32(32))
    example = np.array([[a], [b]], np.float32)
    model = lightgbm.LGBMClassifier(n_estimators=3, min_child_samples=1, min_data_in_bin=1, verbose=-1)
    model.fit(np.repeat(example, 20, axis=0), np.repeat([0, 1], 20))
    with mlflow.start_run():
        mlflow.lightgbm.log_model(model, name="model", registered_model_name="split-on-float32", input_example=example,
                                  pip_requirements=TABULAR_REQUIREMENTS)

    with pytest.raises(StageError, match=r"beyond tolerance, nothing registered: .*split threshold that float32 "
                                         r"rounds up \(row 1: feature 0 = 16\.0000038"):
        convert_model(model_name="split-on-float32", version="1", config=load_config(overrides=NO_BENCHMARK))
    assert versions_of("split-on-float32-onnx") == []


def test_an_undetectable_artifact_names_the_supported_sources(stage: str, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "model.txt").write_text("not a model")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "notes"), artifact_path="notes")

    with pytest.raises(StageError, match=r"no supported model in .*notes; supported sources: keras: a \.keras file.*"
                                         r"saved_model: .*sklearn: an MLflow sklearn flavor.*xgboost"):
        convert_model(model_name="notes", path=f"runs:/{run.info.run_id}/notes", config=load_config())
