"""The sweep's tasks: find the registered versions without an ONNX twin (not twins themselves), start one flow run
of the `convert` deployment for each (the deployment's concurrency limit bounds how many run at once, on whichever
workers are free), wait for them and report."""
from __future__ import annotations

import time
from uuid import UUID

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.states import State

from onnx_stage.config import StageConfig, SweepConfig
from onnx_stage.errors import StageError
from onnx_stage.records import ModelRef
from onnx_stage.tasks.register import TAG, TWIN_OF

CONVERT_DEPLOYMENT = "convert-keras-to-onnx/convert"  # its concurrency limit is sweep.max_concurrency (deploy.py)

ONNX_TWIN = TAG + "onnx_twin"  # set on a source version once its twin is published


def swept_model_names(client: MlflowClient, sweep: SweepConfig) -> list[str]:
    clauses = [f"name LIKE '{sweep.model_name_pattern}'"]
    if tag := sweep.model_tag_filter():
        clauses.append(f"tags.`{tag[0]}` = '{tag[1]}'")
    models = client.search_registered_models(filter_string=" AND ".join(clauses))
    return sorted(model.name for model in models)


def needs_twin(version: ModelVersion, oldest_created_ms: float) -> bool:
    return (version.status == "READY" and TWIN_OF not in version.tags and ONNX_TWIN not in version.tags
            and version.creation_timestamp <= oldest_created_ms)


def find_unconverted_versions(sweep: SweepConfig, now_s: float | None = None) -> list[ModelRef]:
    """Newest first, at most `sweep.max_versions`, skipping versions younger than `sweep.min_age_minutes`."""
    client = MlflowClient()
    oldest_created_ms = ((now_s or time.time()) - 60 * sweep.min_age_minutes) * 1000
    found: list[ModelVersion] = []
    for name in swept_model_names(client, sweep):
        versions = client.search_model_versions(f"name='{name}'", order_by=["version_number DESC"])
        found += [v for v in versions if needs_twin(v, oldest_created_ms)]
    found.sort(key=lambda v: v.creation_timestamp, reverse=True)
    return [ModelRef(name=v.name, version=v.version) for v in found[:sweep.max_versions]]


@task(name="find-unconverted", cache_policy=NO_CACHE)
def find_unconverted(sweep: SweepConfig) -> list[ModelRef]:
    return find_unconverted_versions(sweep)


@task(name="start-conversion", cache_policy=NO_CACHE, task_run_name="start {ref.name}/{ref.version}")
def start_conversion(ref: ModelRef, config: StageConfig) -> UUID:
    """One flow run of the convert deployment for this version, returned at once (it waits for a worker and for a
    slot of the deployment's concurrency limit); the same sweep run never starts it twice (idempotency key)."""
    run = run_deployment(CONVERT_DEPLOYMENT, timeout=0, as_subflow=True,
                         parameters={"model_name": ref.name, "version": ref.version,
                                     "config": config.model_dump(mode="json")},
                         idempotency_key=f"sweep-{flow_run.get_id()}-{ref.name}-{ref.version}")
    return run.id


def wait_for_runs(run_ids: list[UUID], timeout_seconds: float, poll_seconds: float = 5) -> list[FlowRun]:
    """The flow runs once each is in a final state; a StageError naming the unfinished ones after the timeout."""
    deadline = time.monotonic() + timeout_seconds
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(run_id) for run_id in run_ids]
            unfinished = [run.name for run in runs if not (run.state and run.state.is_final())]
            if not unfinished:
                return runs
            if time.monotonic() > deadline:
                raise StageError(f"sweep: {len(unfinished)} conversion run(s) still unfinished after "
                                 f"{timeout_seconds:.0f} s ({', '.join(unfinished)}); look at the work pool's workers")
            time.sleep(poll_seconds)


@task(name="wait-for-conversions", cache_policy=NO_CACHE)
def wait_for_conversions(run_ids: list[UUID], timeout_seconds: float) -> list[State]:
    return [run.state for run in wait_for_runs(run_ids, timeout_seconds)]


def report_outcomes(refs: list[ModelRef], states: list[State]) -> list[str]:
    """A table artifact of what each conversion run did; fails naming the versions whose conversion failed."""
    rows = [{"version": ref.describe(), "outcome": state.name, "detail": state.message or ""}
            for ref, state in zip(refs, states)]
    create_table_artifact(rows, key="onnx-sweep", description="Versions without an ONNX twin, and what the sweep did")
    print(f"sweep: {len(refs)} version(s) without an ONNX twin: {', '.join(r.describe() for r in refs) or 'none'}")
    if failed := [ref.describe() for ref, state in zip(refs, states) if not state.is_completed()]:
        raise StageError(f"sweep: {len(failed)} of {len(refs)} conversions failed ({', '.join(failed)}); "
                         "their flow runs say why")
    return [f"{row['version']}: {row['outcome']}" for row in rows]
