"""find-unconverted: the registered versions the sweep should convert — no ONNX twin yet, not a twin themselves."""
from __future__ import annotations

import time

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from onnx_stage.config import SweepConfig
from onnx_stage.errors import StageError
from tasks.records import ModelRef, RegisteredTwin
from tasks.register import TAG, TWIN_OF

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


def report_outcomes(refs: list[ModelRef], states: list[State]) -> list[RegisteredTwin]:
    """A table artifact of what each conversion did; fails naming the versions whose conversion failed."""
    rows = [{"version": ref.describe(), "outcome": state.name, "detail": state.message or ""}
            for ref, state in zip(refs, states)]
    create_table_artifact(rows, key="onnx-sweep", description="Versions without an ONNX twin, and what the sweep did")
    print(f"sweep: {len(refs)} version(s) without an ONNX twin: {', '.join(r.describe() for r in refs) or 'none'}")
    if failed := [ref.describe() for ref, state in zip(refs, states) if not state.is_completed()]:
        raise StageError(f"sweep: {len(failed)} of {len(refs)} conversions failed ({', '.join(failed)}); "
                         "their flow runs say why")
    return [state.result() for state in states]
