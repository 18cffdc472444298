"""Where MLflow lives: MLFLOW_TRACKING_URI if set, else an embedded sqlite store under ONNX_STAGE_HOME."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient


def stage_home() -> Path:
    return Path(os.environ.get("ONNX_STAGE_HOME", ".onnx-stage")).resolve()


def configure_tracking() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{stage_home() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def use_experiment(name: str) -> str:
    """Select (creating if needed) an experiment; a local store keeps its artifacts beside the database."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        local = mlflow.get_tracking_uri().startswith("sqlite:")
        location = (stage_home() / "artifacts").as_uri() if local else None
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
