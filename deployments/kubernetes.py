"""The `onnx-stage-kubernetes` work pool: the base job template a Prefect Kubernetes worker fills in for each run.

    python -m deployments.kubernetes > deployments/kubernetes/base-job-template.json   # regenerate (a test checks)
    prefect work-pool create onnx-stage-kubernetes --type kubernetes \\
        --base-job-template deployments/kubernetes/base-job-template.json

It is prefect-kubernetes' default template with the stage's defaults: the worker image (deployments/docker/Dockerfile,
pushed to your registry), requests and limits sized from the conversion's memory bound (below), MLflow's address as a
variable and its credentials **by reference** to a Kubernetes Secret (`secretKeyRef`), never as values in Prefect.
Kubernetes cannot run on the machines this was built on: a test renders the Job the worker would submit
(KubernetesWorkerJobConfiguration) and checks it; nothing was applied to a cluster.
"""
from __future__ import annotations

import copy
import json
import sys
from typing import Any

KUBERNETES_POOL = "onnx-stage-kubernetes"
MLFLOW_SECRET = "onnx-stage-mlflow"  # keys: username, password (kubectl create secret generic ... below)
# Memory a conversion needs (README "What each task does", measured on VGG16: weights 0.52 GiB, child peak 2.3 GiB):
# the Keras child holds TensorFlow + Keras (1.2 GiB) and about twice the weights while converting; the flow process
# (Prefect, MLflow, onnxruntime validating the ONNX model) about 0.5 GiB and the weights once more.
TENSORFLOW_GIB = 1.2
FLOW_PROCESS_GIB = 0.5
WEIGHT_COPIES = 3
MAX_WEIGHTS_GIB = 0.55  # the largest model the pool's defaults are sized for (VGG16 class); raise it per deployment


def memory_mib(weights_gib: float = MAX_WEIGHTS_GIB) -> int:
    """Memory request for converting a model with this many GiB of weights, rounded up to 256 MiB."""
    needed = (TENSORFLOW_GIB + FLOW_PROCESS_GIB + WEIGHT_COPIES * weights_gib) * 1024
    return int(-(-needed // 256) * 256)


def base_job_template(image: str = "registry.example.com/onnx-stage-worker:latest") -> dict[str, Any]:
    """prefect-kubernetes' default base job template with the stage's image, resources and secret references."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    variables = template["variables"]["properties"]
    request = memory_mib()
    defaults = {"image": image, "namespace": "onnx-stage", "image_pull_policy": "IfNotPresent",
                "cpu_request": "1", "cpu_limit": "2", "memory_request": f"{request}Mi",
                "memory_limit": f"{request * 5 // 4}Mi", "backoff_limit": 0, "finished_job_ttl": 3600}
    for name, value in defaults.items():
        variables[name]["default"] = value
    variables["mlflow_tracking_uri"] = {
        "title": "MLflow tracking URI", "type": "string", "default": "http://mlflow.mlflow.svc.cluster.local:5000",
        "description": "The MLflow server the conversion reads from and registers to."}
    variables["mlflow_secret"] = {
        "title": "MLflow credentials Secret", "type": "string", "default": MLFLOW_SECRET,
        "description": "Kubernetes Secret with keys `username` and `password` of the stage's MLflow user."}
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": "MLFLOW_TRACKING_URI", "value": "{{ mlflow_tracking_uri }}"},
        *({"name": f"MLFLOW_TRACKING_{key.upper()}",
           "valueFrom": {"secretKeyRef": {"name": "{{ mlflow_secret }}", "key": key}}}
          for key in ("username", "password")),
    ]
    template["job_configuration"]["env"] = "{{ env }}"
    return template


if __name__ == "__main__":
    json.dump(base_job_template(), sys.stdout, indent=2)
    sys.stdout.write("\n")
