"""What the production tests do: act as an MLflow user, train a version, find its twins and the flow runs on it."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator
from uuid import UUID

from onnx_stage.tasks.register import COMPLETE

WAIT_SECONDS = 600  # generous: a loaded 2-core machine converts slowly; the tests print the real waits
# Conversions in these tests skip the benchmark; a killed run's lease frees its model after 60 s (the server's
# minimum), not 2 min.
FAST_OVERRIDES = ["benchmark.enabled=false", "registry.lease_seconds=60"]
CONVERSION_DEPLOYMENTS = ("on-new-model-version", "convert")


@contextmanager
def as_user(username: str, password: str) -> Iterator[None]:
    """MLflow calls inside act as this user; the previous login is restored after."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def train_as(model: str, seed: int) -> str:
    """A new Keras version of `model`, registered by whoever is signed in."""
    from onnx_stage.flows.train_demo import train_and_register

    return train_and_register.fn(name=model, alias="champion", epochs=1, seed=seed)


def twin_versions(model: str, version: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name='{model}-onnx'"):
        return []
    return client.search_model_versions(f"name='{model}-onnx' and tags.`onnx_stage.twin_of`='{model}/{version}'")


def twins_of(model: str, version: str, complete_only: bool = True) -> list[str]:
    """Version numbers of the fp32 twins of model/version (only those marked complete, unless told otherwise)."""
    return sorted(v.version for v in twin_versions(model, version)
                  if v.tags.get("onnx_stage.variant", "fp32") == "fp32" and (v.tags.get(COMPLETE) == "true"
                                                                            or not complete_only))


def wait_for_complete_twin(model: str, version: str, timeout_seconds: float = WAIT_SECONDS) -> tuple[object, float]:
    """(the complete twin's ModelVersion, seconds waited)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        complete = [v for v in twin_versions(model, version) if v.tags.get(COMPLETE) == "true"]
        if complete:
            return complete[0], time.monotonic() - started
        time.sleep(2)
    raise AssertionError(f"no complete ONNX twin of {model}/{version} after {timeout_seconds:.0f} s")


def conversion_runs(model: str, version: str) -> list:
    """Flow runs of the conversion deployments whose parameters name model/version."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=list(CONVERSION_DEPLOYMENTS))), limit=200)
    return [run for run in runs
            if run.parameters.get("model_name") == model and str(run.parameters.get("version")) == version]


def running_run_of(model: str, version: str, timeout_seconds: float = WAIT_SECONDS):  # -> FlowRun
    """The first conversion run of model/version once it is Running (with its process id known)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        running = [run for run in conversion_runs(model, version)
                   if run.state and run.state.is_running() and run.infrastructure_pid]
        if running:
            return running[0]
        time.sleep(1)
    raise AssertionError(f"no conversion run of {model}/{version} running after {timeout_seconds:.0f} s")


def final_runs_of(model: str, version: str, expected_at_least: int, sweep_id: UUID | None = None,
                  timeout_seconds: float = 840) -> list:
    """The conversion runs of model/version (and the sweep run, if given) once at least `expected_at_least` exist
    and every one is in a final state."""
    from prefect.client.orchestration import get_client

    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        runs = conversion_runs(model, version)
        if sweep_id:
            with get_client(sync_client=True) as client:
                runs.append(client.read_flow_run(sweep_id))
        if len(runs) >= expected_at_least and all(run.state and run.state.is_final() for run in runs):
            return runs
        time.sleep(3)
    states = sorted(f"{run.name}: {run.state.name if run.state else None}" for run in runs)
    raise AssertionError(f"runs of {model}/{version} not all final after {timeout_seconds:.0f} s: {states}")



def convert_with(deployment: str, overrides: list[str]) -> None:
    """Runs of `deployment` (e.g. on-new-model-version) created from now on convert with these config overrides."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    from onnx_stage.config import load_config

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(f"convert-keras-to-onnx/{deployment}")
        client.update_deployment(found.id, DeploymentUpdate(parameters={
            "config": load_config(overrides=overrides).model_dump(mode="json")}))


@contextmanager
def event_conversions_with(overrides: list[str]) -> Iterator[None]:
    """Conversions the webhook starts inside run with FAST_OVERRIDES plus `overrides` (the deployment's parameters);
    FAST_OVERRIDES alone again after."""
    convert_with("on-new-model-version", [*FAST_OVERRIDES, *overrides])
    try:
        yield
    finally:
        convert_with("on-new-model-version", FAST_OVERRIDES)


def wait_for_task_run(flow_run_id: UUID, task: str, timeout_seconds: float = WAIT_SECONDS) -> None:
    """Until the flow run's task `task` (its name before Prefect's suffix) is running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    started = time.monotonic()
    with get_client(sync_client=True) as client:
        while time.monotonic() - started < timeout_seconds:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if any(run.name.rsplit("-", 1)[0] == task and run.state and run.state.is_running() for run in runs):
                return
            time.sleep(0.5)
    raise AssertionError(f"task {task} of flow run {flow_run_id} not running after {timeout_seconds:.0f} s")
