"""Fixtures of the integration tests that convert models without MLflow or Prefect."""
from __future__ import annotations

from typing import Iterator

import pytest

from onnx_stage.keras_worker import KerasWorker


@pytest.fixture(scope="module")
def worker() -> Iterator[KerasWorker]:
    """One Keras child process shared by a test module's conversions."""
    with KerasWorker(timeout_seconds=300) as shared:
        yield shared
