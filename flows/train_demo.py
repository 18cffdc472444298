"""Demo training flow: a small Keras MLP on scikit-learn's bundled digits, registered as digits-mlp@champion."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.models import infer_signature
from prefect import flow
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from onnx_stage.tracking import configure_tracking, use_experiment


def train_digits_mlp(epochs: int, seed: int) -> tuple[keras.Model, np.ndarray, float]:
    digits = load_digits()
    features = (digits.data / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(features, digits.target, test_size=0.25, random_state=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,), name="pixels"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="digits_mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return model, x_test[:5], float(accuracy)


@flow(name="train-digits-demo", log_prints=True)
def train_and_register(name: str = "digits-mlp", alias: str = "champion", epochs: int = 30, seed: int = 0) -> str:
    configure_tracking()
    use_experiment("digits-demo")
    run_id, accuracy = train_and_log(epochs, seed)
    version = mlflow.register_model(f"runs:/{run_id}/model", name).version
    MlflowClient().set_registered_model_alias(name, alias, version)
    print(f"trained {name} (test accuracy {accuracy:.3f}), registered version {version} as {name}@{alias}")
    return str(version)


def train_and_log(epochs: int, seed: int) -> tuple[str, float]:
    """Train digits-mlp and log it (MLflow keras flavor under `model/`, the legacy .h5 under `legacy/`) into a new
    run of the current experiment; returns (run id, test accuracy). Registering it is the caller's choice."""
    model, example, accuracy = train_digits_mlp(epochs, seed)
    with mlflow.start_run(run_name="train digits-mlp") as run, tempfile.TemporaryDirectory() as scratch:
        mlflow.log_metric("test_accuracy", accuracy)
        # mlflow.keras.log_model(input_example=...) writes the example before creating its folder (MLflow
        # 3.17 FileNotFoundError); save_model into a folder that exists, then log and register that folder.
        model_dir = Path(scratch) / "model"
        model_dir.mkdir()
        mlflow.keras.save_model(model, str(model_dir), input_example=example,
                                signature=infer_signature(example, model.predict_on_batch(example)),
                                pip_requirements=[f"keras=={keras.__version__}", "tensorflow-cpu"])
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        model.save(Path(scratch) / "digits_mlp.h5")  # the original article's legacy format, as a run artifact
        mlflow.log_artifact(str(Path(scratch) / "digits_mlp.h5"), artifact_path="legacy")
    return run.info.run_id, accuracy


def main(argv: list[str] | None = None) -> None:
    """`python -m onnx_stage.flows.train_demo [--name N] [--alias A] [--epochs E] [--seed S]`: train, log, register
    into MLFLOW_TRACKING_URI (the embedded store under ONNX_STAGE_HOME when unset)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="digits-mlp", help="registered model name (default digits-mlp)")
    parser.add_argument("--alias", default="champion", help="alias set on the new version (default champion)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="weights and split seed (default 0)")
    args = parser.parse_args(argv)
    train_and_register(name=args.name, alias=args.alias, epochs=args.epochs, seed=args.seed)


if __name__ == "__main__":
    main()
