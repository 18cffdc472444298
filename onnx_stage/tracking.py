"""Where MLflow lives: MLFLOW_TRACKING_URI if set, else an embedded sqlite store under ONNX_STAGE_HOME."""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from onnx_stage.errors import StageError


def stage_home() -> Path:
    return Path(os.environ.get("ONNX_STAGE_HOME", ".onnx-stage")).resolve()


def configure_tracking() -> str:
    """Point MLflow at MLFLOW_TRACKING_URI or the embedded store; raises StageError if a tracking server does not
    answer (see check_reachable)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{stage_home() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def check_reachable(uri: str, attempts: int | None = None, timeout_seconds: float | None = None) -> None:
    """Fail within seconds, naming the URI, when an http(s) tracking server does not answer at all (any HTTP status
    counts as an answer), rather than after minutes of MLflow's retries. `ONNX_STAGE_MLFLOW_CHECK_ATTEMPTS` (3) and
    `ONNX_STAGE_MLFLOW_CHECK_TIMEOUT` (5 s per attempt) override the defaults; other URIs pass unchecked.

    Raises StageError."""
    if not uri.startswith(("http://", "https://")):
        return
    attempts = attempts or int(os.environ.get("ONNX_STAGE_MLFLOW_CHECK_ATTEMPTS", "3"))
    timeout_seconds = timeout_seconds or float(os.environ.get("ONNX_STAGE_MLFLOW_CHECK_TIMEOUT", "5"))
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_seconds):
                return
        except urllib.error.HTTPError:
            return  # it answered: authentication, a proxy's 404 and the like are MLflow's to report
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            if attempt + 1 < attempts:
                time.sleep(1.0)
    raise StageError(f"cannot reach MLflow at {uri} ({reason}; {attempts} attempts): start the tracking server "
                     "or set MLFLOW_TRACKING_URI to one that runs (unset: the embedded store under ONNX_STAGE_HOME)")


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


def name_clause(name: str) -> str:
    """`name='…'` for an MLflow search filter; a name holding a single quote is double-quoted (MLflow's filter
    parser has no escape for a quote inside a string)."""
    return f'name="{name}"' if "'" in name else f"name='{name}'"
