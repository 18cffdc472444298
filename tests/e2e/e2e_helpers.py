"""What the e2e tests do against the stack: train a version, look for its twin, read a service's log."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from deployments.stack import Stack

MODEL = "digits-e2e"
TWIN_WAIT_SECONDS = 600  # generous: a loaded 2-core machine converts slowly; the test reports the real wait


def train_version(seed: int) -> str:
    """A new Keras version of MODEL (different weights each seed), aliased champion."""
    from onnx_stage.flows.train_demo import train_and_register

    return train_and_register.fn(name=MODEL, alias="champion", epochs=1, seed=seed)


def twin_of(version: str) -> str | None:
    """The complete ONNX twin version of MODEL/version, if any (a version still being checked does not count)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name='{MODEL}-onnx'"):
        return None
    twins = client.search_model_versions(f"name='{MODEL}-onnx' and tags.`onnx_stage.twin_of`='{MODEL}/{version}' "
                                         "and tags.`onnx_stage.complete`='true'")  # registered, checked, published
    return twins[0].version if twins else None


def wait_for_twin(version: str, timeout_seconds: float = TWIN_WAIT_SECONDS) -> tuple[str, float]:
    """(twin version, seconds waited); fails after the timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        if twin := twin_of(version):
            return twin, time.monotonic() - started
        time.sleep(2)
    raise AssertionError(f"no ONNX twin of {MODEL}/{version} after {timeout_seconds:.0f} s")


def service_log(stack: Stack, name: str) -> str:
    return (stack.state_dir / "logs" / f"{name}.log").read_text()


@contextmanager
def bridge_down(stack: Stack, timeout_seconds: float = 120) -> Iterator[None]:
    """Versions registered inside are never delivered: the bridge comes back only once MLflow gave up retrying."""
    give_up = f"Webhook request to {stack.bridge_url} failed"
    earlier_give_ups = service_log(stack, "mlflow").count(give_up)
    stack.stop("bridge")
    try:
        yield
        deadline = time.monotonic() + timeout_seconds
        while service_log(stack, "mlflow").count(give_up) == earlier_give_ups and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        stack.start("bridge")
