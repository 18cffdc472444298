"""The stack as users run it: a version registered in MLflow gets its ONNX twin with no further action."""
from __future__ import annotations

import time
from typing import get_args

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
from prefect.deployments import run_deployment

from deployments.deploy import triggers_per_deployment
from deployments.stack import Stack
from e2e_helpers import MODEL, bridge_down, service_log, train_version, twin_of, wait_for_twin
from onnx_stage.config import ConverterRoute, load_config
from onnx_stage.tasks.register import TWIN_OF


def runs_of(deployment_name: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])))


def test_redeploying_leaves_one_trigger_and_the_configured_schedule(stack: Stack) -> None:
    stack.deploy()
    with get_client(sync_client=True) as client:
        assert triggers_per_deployment(client) == {"convert": 0, "on-new-model-version": 1, "sweep": 0}
        sweep = client.read_deployment_by_name("sweep-unconverted-versions/sweep")
    assert [s.schedule.cron for s in sweep.schedules] == [load_config().sweep.cron]


def test_convert_deployment_schema_documents_the_run_form(stack: Stack) -> None:
    with get_client(sync_client=True) as client:
        convert = client.read_deployment_by_name("convert-keras-to-onnx/convert")
    schema = convert.parameter_openapi_schema
    assert convert.enforce_parameter_schema
    assert schema["required"] == ["model_name"]
    properties = schema["properties"]
    assert "Registered Keras model" in properties["model_name"]["description"]
    assert {"string", "null"} == {option["type"] for option in properties["alias"]["anyOf"]}
    assert properties["config"]["default"]["convert"]["opset"] == 17  # the form opens filled with the defaults
    convert_section = schema["definitions"]["ConvertConfig"]["properties"]
    assert (convert_section["opset"]["minimum"], convert_section["opset"]["maximum"]) == (13, 21)
    assert convert_section["routes"]["items"]["enum"] == list(get_args(ConverterRoute))
    assert "ONNX opset" in convert_section["opset"]["description"]
    with get_client(sync_client=True) as client:
        refused = None
        try:
            client.create_flow_run_from_deployment(convert.id, parameters={"model_name": MODEL, "config": {
                "convert": {"opset": 99}}})
        except Exception as error:  # the server answers 409 before any run exists
            refused = error
    assert refused is not None and "opset" in str(refused)


def test_new_version_gets_its_twin_and_the_twin_starts_nothing(stack: Stack) -> None:
    version = train_version(seed=11)

    twin, seconds = wait_for_twin(version)
    print(f"\nwebhook → ONNX twin registered: {seconds:.1f} s")

    time.sleep(5)  # MLflow delivers the twin's own model_version.created: the bridge must drop it
    assert f"version is an ONNX twin (has the '{TWIN_OF}' tag)" in service_log(stack, "bridge")
    deadline = time.monotonic() + 120  # the run still prints its summary after the twin is complete
    while True:
        runs = [r for r in runs_of("on-new-model-version") if r.parameters.get("model_name") == MODEL]
        if all(r.state.is_final() for r in runs) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert [(r.parameters["version"], r.state.is_completed()) for r in runs] == [(version, True)]
    assert twin
    # the worker runs under the warm engine: the run started in a process that had imported everything already
    assert f"flow run {runs[0].id} handed to ready process" in service_log(stack, "worker")


def test_version_missed_while_the_bridge_was_down_is_converted_by_a_sweep(stack: Stack) -> None:
    with bridge_down(stack):
        missed = train_version(seed=12)
    assert twin_of(missed) is None

    config = load_config(overrides=["sweep.min_age_minutes=0", f"sweep.model_name_pattern={MODEL}",
                                    "benchmark.enabled=false"])
    started = time.monotonic()
    run = run_deployment("sweep-unconverted-versions/sweep", parameters={"config": config.model_dump(mode="json")},
                         timeout=600)
    print(f"\nsweep run: {time.monotonic() - started:.1f} s")

    assert run.state.is_completed(), run.state.message
    assert twin_of(missed)
