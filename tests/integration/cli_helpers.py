"""What the CLI-level tests share: the environment that points `onnx-stage` at the session's servers, and a
snapshot of the whole model registry to compare before and after a run."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ONNX_STAGE = str(Path(sys.executable).parent / "onnx-stage")


def cli_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """The CLI's environment: this MLflow server and the Prefect server of the test harness (one for every run)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PREFECT_API_URL": PREFECT_API_URL.value(),
            "TF_CPP_MIN_LOG_LEVEL": "3", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def registry_snapshot() -> dict[str, Any]:
    """Every registered model with its tags and aliases, and every version with its status, source, tags and
    aliases, from the current tracking URI."""
    from mlflow import MlflowClient

    client = MlflowClient()
    versions: dict[str, list] = {}
    for version in client.search_model_versions(max_results=10_000):
        versions.setdefault(version.name, []).append(
            (version.version, version.status, version.source, dict(version.tags), sorted(version.aliases)))
    return {model.name: {"tags": dict(model.tags), "aliases": dict(model.aliases),
                         "versions": sorted(versions.get(model.name, []))}
            for model in client.search_registered_models(max_results=1000)}
