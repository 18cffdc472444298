"""Deploy deployments/prefect.yaml to the Prefect API in PREFECT_API_URL, leaving exactly one trigger per deployment.

`prefect deploy` replaces the automations a deployment owns, but automations of deleted or re-created deployments
and those `serve` or the UI made stay and keep firing: this removes them first, then deploys.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import yaml
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
from prefect.events.schemas.automations import Automation
from prefect.exceptions import ObjectAlreadyExists

from onnx_stage.config import load_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_ROOT / "deployments" / "prefect.yaml"
WORK_POOL = "onnx-stage"
DOCKER_POOL = "onnx-stage-docker"
PROJECT_TAG = "onnx-stage"  # every deployment in prefect.yaml carries it


def ensure_work_pool(client: SyncPrefectClient, name: str = WORK_POOL, pool_type: str = "process") -> None:
    """Create the pool with its worker type's default job template unless it exists."""
    template = {}
    if pool_type == "docker":
        from prefect_docker.worker import DockerWorker

        template = DockerWorker.get_default_base_job_template()
    try:
        client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
    except ObjectAlreadyExists:
        pass


def deployments_on(pool: str) -> list[str]:
    """Names of the deployments in prefect.yaml that run on this work pool."""
    deployments = yaml.safe_load(PREFECT_FILE.read_text())["deployments"]
    return [d["name"] for d in deployments if d["work_pool"]["name"] == pool]


def run_prefect_deploy(config_path: str | None = None, names: list[str] | None = None,
                       env: dict[str, str] | None = None) -> None:
    env = {**os.environ, "ONNX_STAGE_SWEEP_CRON": load_config(config_path).sweep.cron, **(env or {})}
    command = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy",
               *[argument for name in (names or deployments_on(WORK_POOL)) for argument in ("--name", name)],
               "--prefect-file", str(PREFECT_FILE)]
    # The worker loads flows from the directory `prefect deploy` ran in: the project root (the same path in the
    # worker image).
    subprocess.run(command, cwd=PROJECT_ROOT, env=env, check=True)


def deployment_targets(automation: Automation) -> set[UUID]:
    return {action.deployment_id for action in automation.actions if getattr(action, "deployment_id", None)}


def stale_automation_ids(client: SyncPrefectClient, redeployed: set[str]) -> list[UUID]:
    """Automations running a deployment that no longer exists, or one of ours (prefect deploy recreates those)."""
    live = {d.id: d for d in client.read_deployments()}
    ours = {d.id for d in live.values() if d.name in redeployed and PROJECT_TAG in (d.tags or [])}
    return [automation.id for automation in client.read_automations()
            if (targets := deployment_targets(automation)) and (targets - live.keys() or targets & ours)]


def triggers_per_deployment(client: SyncPrefectClient) -> dict[str, int]:
    """Deployment name → how many automations run it (its triggers)."""
    names = {d.id: d.name for d in client.read_deployments()}
    counts = dict.fromkeys(names.values(), 0)
    for automation in client.read_automations():
        for target in deployment_targets(automation) & names.keys():
            counts[names[target]] += 1
    return counts


CONVERT_DEPLOYMENT = "convert-keras-to-onnx/convert"


def limit_conversions(client: SyncPrefectClient, limit: int) -> None:
    """The convert deployment runs at most `limit` flow runs at once (the sweep's fan-out waits its turn)."""
    deployment = client.read_deployment_by_name(CONVERT_DEPLOYMENT)
    client.update_deployment(deployment.id, DeploymentUpdate(concurrency_limit=limit))


def deploy_containers(image: str, credentials_file: str) -> None:
    """The docker pool and the deployment that converts in a container of `image` (deployments/containers.py),
    MLflow's credentials mounted from `credentials_file`."""
    with get_client(sync_client=True) as client:
        ensure_work_pool(client, DOCKER_POOL, "docker")
    run_prefect_deploy(names=deployments_on(DOCKER_POOL), env={
        "ONNX_STAGE_WORKER_IMAGE": image, "ONNX_STAGE_MLFLOW_CREDENTIALS": credentials_file,
        "ONNX_STAGE_PROJECT_ROOT": str(PROJECT_ROOT)})


def deploy(config_path: str | None = None) -> int:
    """The process pool's deployments; returns how many stale automations were removed."""
    redeployed = set(deployments_on(WORK_POOL))
    with get_client(sync_client=True) as client:
        ensure_work_pool(client)
        stale = stale_automation_ids(client, redeployed)
        for automation_id in stale:
            client.delete_automation(automation_id)
    run_prefect_deploy(config_path)
    with get_client(sync_client=True) as client:
        limit_conversions(client, load_config(config_path).sweep.max_concurrency)
    return len(stale)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--containers"]:
        deploy_containers(sys.argv[2], sys.argv[3])
        print(f"deployed {', '.join(deployments_on(DOCKER_POOL))} on pool {DOCKER_POOL} ({sys.argv[2]})")
    else:
        removed = deploy(sys.argv[1] if len(sys.argv) > 1 else None)
        print(f"deployed {PREFECT_FILE.relative_to(PROJECT_ROOT)}; replaced {removed} earlier trigger automation(s)")
