"""The Job a Prefect Kubernetes worker would submit for the onnx-stage-kubernetes pool, rendered by prefect-kubernetes.
Kubernetes cannot run here: this checks the rendered manifest, nothing is applied to a cluster."""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from deployments.kubernetes import MLFLOW_SECRET, base_job_template, memory_mib

TEMPLATE_FILE = Path(__file__).resolve().parents[2] / "deployments" / "kubernetes" / "base-job-template.json"
API_URL = "http://prefect-server.prefect.svc.cluster.local:4200/api"


def render_job(template: dict, values: dict) -> dict:
    """The Job manifest for one flow run, as KubernetesWorker.run would build it."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    with temporary_settings(updates={PREFECT_API_URL: API_URL}):
        configuration = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
        configuration.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4()))
    return configuration.job_manifest


def test_committed_template_is_the_generated_one() -> None:
    assert json.loads(TEMPLATE_FILE.read_text()) == base_job_template()


def test_rendered_job_has_the_image_command_env_resources_and_secret_references() -> None:
    job = render_job(json.loads(TEMPLATE_FILE.read_text()),
                     {"image": "registry.example.com/onnx-stage-worker:0123abcd", "env": {"ONNX_STAGE_HOME": "/tmp/s"}})

    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "onnx-stage"
    assert job["spec"]["backoffLimit"] == 0  # a failed conversion is not rerun by Kubernetes: the sweep finds it
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/onnx-stage-worker:0123abcd"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    env = {item["name"]: item for item in container["env"]}
    assert env["PREFECT_API_URL"]["value"] == API_URL
    assert env["PREFECT__FLOW_RUN_ID"]["value"]
    assert env["ONNX_STAGE_HOME"]["value"] == "/tmp/s"
    assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http://mlflow.")
    for key in ("username", "password"):  # by reference only: no credential value in the manifest or in Prefect
        item = env[f"MLFLOW_TRACKING_{key.upper()}"]
        assert item == {"name": f"MLFLOW_TRACKING_{key.upper()}",
                        "valueFrom": {"secretKeyRef": {"name": MLFLOW_SECRET, "key": key}}}
    assert container["resources"] == {"requests": {"cpu": "1", "memory": f"{memory_mib()}Mi"},
                                      "limits": {"cpu": "2", "memory": f"{memory_mib() * 5 // 4}Mi"}}


def test_memory_is_sized_from_the_conversion_bound() -> None:
    assert memory_mib(0.55) == 3584  # 1.2 GiB TensorFlow + 0.5 GiB flow process + 3 × 0.55 GiB weights, rounded up
    assert memory_mib(0.0) == 1792
    assert memory_mib(2.0) > memory_mib(0.55)
