"""A flow that reports the process it runs in, for tests/integration/test_warm_engine.py."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prefect import flow
from prefect.settings import PREFECT_API_URL

from onnx_stage.keras_worker import KerasWorker
from onnx_stage.tracking import configure_tracking


@flow(name="report-process")
def report_process(report: str, fail: bool = False, sleep_seconds: float = 0) -> None:
    configure_tracking()  # as convert_model does first: it sets MLflow's variables, which must not cost the child
    prestarted = KerasWorker._prestarted
    Path(report).write_text(json.dumps({
        "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "marker": os.environ.get("ENGINE_TEST_MARKER"),
        "api": PREFECT_API_URL.value(), "prestarted": prestarted is not None and prestarted is KerasWorker.open(60),
        "retries": os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"),
    }))
    time.sleep(sleep_seconds)
    if fail:
        raise RuntimeError("asked to fail")
