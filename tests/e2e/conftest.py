"""One local production stack (deployments/stack.py: mlflow server, prefect server, worker, bridge) for all e2e tests."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from deployments.stack import Stack
from deployments.servers import free_port


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Started with the same code as `make stack-up`; this test process then talks to it as a client does."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack = Stack(state_dir=tmp_path_factory.mktemp("e2e") / "stack", mlflow_port=free_port(),
                  prefect_port=free_port(), bridge_port=free_port(), worker_port=free_port())
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "ONNX_STAGE_HOME")}
    try:
        stack.up()
        os.environ.update(MLFLOW_TRACKING_URI=stack.mlflow_uri, ONNX_STAGE_HOME=str(stack.state_dir.parent))
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
            yield stack
    finally:
        stack.down()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
