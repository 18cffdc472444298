"""Shared fixtures: a real `mlflow server` on 127.0.0.1 (sqlite) and Prefect's test harness, once per session."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
import onnx_stage  # noqa: E402,F401  (turns MLflow telemetry off before anything imports mlflow)


@pytest.fixture(scope="session", autouse=True)
def temporary_directory(request: pytest.FixtureRequest) -> Iterator[Path]:
    """TMPDIR for the whole run, the servers it starts included: what anything leaves there (a 2.4 GB model's
    download among them) goes when the run passes; kept for a look when a test failed."""
    path = Path(tempfile.mkdtemp(prefix="onnx-stage-tests-"))
    path.chmod(0o1777)  # like /tmp: PostgreSQL runs as its own user below it
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"], tempfile.tempdir = str(path), str(path)
    # at exit, after Prefect's test harness removes its own directory in it (atexit runs last-registered first)
    atexit.register(lambda: request.session.testsfailed or shutil.rmtree(path, ignore_errors=True))
    yield path
    os.environ.pop("TMPDIR") if saved is None else os.environ.__setitem__("TMPDIR", saved)
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from deployments.servers import mlflow_server

    state = tmp_path_factory.mktemp("mlflow-server")
    os.environ["ONNX_STAGE_HOME"] = str(state / "stage-home")
    with mlflow_server(state) as url:
        os.environ["MLFLOW_TRACKING_URI"] = url
        yield url
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def prefect() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture(scope="session")
def stage(mlflow_uri: str, prefect: None) -> str:
    """Both real services up: what an integration test of the flow needs."""
    from onnx_stage.tracking import configure_tracking

    configure_tracking()
    return mlflow_uri


@pytest.fixture(scope="session")
def digits_model(stage: str) -> str:
    """digits-mlp trained on scikit-learn's bundled digits and registered as digits-mlp@champion (version 1)."""
    from onnx_stage.flows.train_demo import train_and_register

    return train_and_register.fn(name="digits-mlp", alias="champion", epochs=5, seed=0)


@pytest.fixture()
def work_dir(tmp_path: Path) -> Path:
    return tmp_path
