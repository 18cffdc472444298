"""The production stack (deployments/production.py) as platform teams run it: PostgreSQL, S3 behind MLflow's artifact
proxy, MLflow basic-auth, two Prefect API replicas behind nginx with Redis, two workers. Started once per session."""
from __future__ import annotations

import os
import shutil
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from deployments.containers import DOCKER_DEPLOYMENT, ContainerStack
from deployments.deploy import DOCKER_POOL
from deployments.production import BUCKET, ProductionStack, free_port_block
from deployments.stack import PROJECT_ROOT
from e2e_helpers import bridge_down
from production_helpers import (
    CONVERSION_DEPLOYMENTS, FAST_OVERRIDES, as_user, convert_with, event_conversions_with, final_runs_of,
    running_run_of, train_as, twins_of, wait_for_complete_twin, wait_for_task_run,
)
from onnx_stage.tasks.register import COMPLETE

MODEL = "digits-prod"
SCIENTIST = ("dana", "dana-" + os.urandom(6).hex())
READER = ("rita", "rita-" + os.urandom(6).hex())


@pytest.fixture(scope="module")  # torn down (and its env and settings undone) before the next module
def stack_and_image() -> Iterator[tuple[ContainerStack, Future]]:
    """The stack started with the same code as `make stack-up PROFILE=production`; the test process then acts as
    the stage's user unless a test says otherwise (as_user)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = Path(tempfile.mkdtemp(prefix="onnx-stage-production-"))
    home.chmod(0o755)  # PostgreSQL runs as its own user below it
    stack = ContainerStack.at(home / "production", free_port_block())
    image = ThreadPoolExecutor(1).submit(stack.prepare_containers)  # dockerd + image while the rest starts
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "ONNX_STAGE_HOME")
    saved = {key: os.environ.get(key) for key in keys}
    try:
        started = time.monotonic()
        stack.up()
        print(f"\nproduction stack up in {time.monotonic() - started:.0f} s")
        stack.ensure_user(*SCIENTIST)
        stack.ensure_user(*READER)
        os.environ.update({key: value for key, value in stack.client_env().items() if key in keys})
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
            # The conversions these tests wait for skip the benchmark and hold short leases: minutes saved in CI.
            for deployment in CONVERSION_DEPLOYMENTS:
                convert_with(deployment, FAST_OVERRIDES)
            yield stack, image
    finally:
        image.exception()  # the build thread ends before its dockerd is stopped
        stack.down_containers()
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def production(stack_and_image: tuple[ContainerStack, Future]) -> ContainerStack:
    return stack_and_image[0]


def test_data_scientist_version_gets_a_complete_twin_whose_files_are_s3_objects(production: ProductionStack) -> None:
    from mlflow import MlflowClient

    with as_user(*SCIENTIST):
        version = train_as(MODEL, seed=21)
    twin, seconds = wait_for_complete_twin(MODEL, version)
    print(f"\nregistered by {SCIENTIST[0]} -> complete ONNX twin: {seconds:.0f} s")

    client = MlflowClient()
    assert twin.status == "READY"
    assert twin.tags[COMPLETE] == "true"  # written last, after the consumer check passed
    source_tags = client.get_model_version(MODEL, version).tags
    assert source_tags["onnx_stage.onnx_twin"] == f"models:/{twin.name}/{twin.version}"
    assert twin.source.startswith("mlflow-artifacts:/")  # the workers hold no S3 keys: MLflow proxies the files
    prefix = "mlflow-artifacts/" + twin.source.removeprefix("mlflow-artifacts:/") + "/"
    objects = production.s3_client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    keys = {item["Key"].removeprefix(prefix): item["Size"] for item in objects.get("Contents", [])}
    assert {"MLmodel", "model.onnx", "extra_files/validation.json", "extra_files/model.json"} <= keys.keys(), keys
    assert keys["model.onnx"] > 1000

    secrets = production.secrets()
    assert (production.state_dir / "secrets.env").stat().st_mode & 0o777 == 0o600
    written = "".join(path.read_text(errors="replace") for path in production.state_dir.rglob("*.log"))
    for key in ("MLFLOW_STAGE_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "S3_SECRET_ACCESS_KEY"):
        assert secrets[key] not in written, f"{key} appears in a log"
    assert SCIENTIST[1] not in written


def test_user_without_write_permission_gets_one_error_line_and_nothing_is_written(production: ProductionStack) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    versions_before = len(client.search_model_versions(f"name='{MODEL}-onnx'"))
    runs_before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": READER[0], "MLFLOW_TRACKING_PASSWORD": READER[1],
           "PREFECT_API_URL": production.prefect_api}
    result = subprocess.run([str(Path(sys.executable).parent / "onnx-stage"), "convert", "--model", MODEL],
                            capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=300)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"onnx-stage: error: MLflow user '{READER[0]}' has READ on registered model '{MODEL}' but a conversion tags "
        "its versions with their twins: ask an MLflow admin to grant EDIT on it, or run as the stage's user "
        "(nothing was written)"]
    assert READER[1] not in result.stdout + result.stderr
    assert len(client.search_model_versions(f"name='{MODEL}-onnx'")) == versions_before
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == runs_before


def announce_through(api_url: str, version: str) -> subprocess.Popen:
    """A training pipeline's announcement of the version, sent through one API replica."""
    code = f"from onnx_stage.events import announce_model_version; announce_model_version({MODEL!r}, {version!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT,
                            env={**os.environ, "PREFECT_API_URL": api_url})


def test_one_version_announced_ten_times_through_both_replicas_and_swept_gets_exactly_one_twin(
        production: ProductionStack) -> None:
    from prefect.deployments import run_deployment

    from onnx_stage.config import load_config

    with as_user(*SCIENTIST):
        version = train_as(MODEL, seed=22)  # the webhook announces it once more
    started = time.monotonic()
    announcers = [announce_through(production.replica_api(1 + n % 2), version) for n in range(10)]
    config = load_config(overrides=[*FAST_OVERRIDES, "sweep.min_age_minutes=0", f"sweep.model_name_pattern={MODEL}"])
    sweep = run_deployment("sweep-unconverted-versions/sweep", parameters={"config": config.model_dump(mode="json")},
                           timeout=0)
    assert [announcer.wait(timeout=120) for announcer in announcers] == [0] * 10

    runs = final_runs_of(MODEL, version, expected_at_least=11, sweep_id=sweep.id)
    print(f"\n{len(runs)} runs of {MODEL}/{version} (10 announcements + webhook + sweep) all final: "
          f"{time.monotonic() - started:.0f} s")
    assert [(run.name, run.state.name) for run in runs if not run.state.is_completed()] == []
    assert len(twins_of(MODEL, version)) == 1


def test_api_replica_stopped_mid_conversion_the_run_completes_through_the_other(production: ProductionStack) -> None:
    with event_conversions_with(["benchmark.enabled=true", "benchmark.min_seconds=5"]):  # still running when stopped
        with as_user(*SCIENTIST):
            version = train_as(MODEL, seed=23)
        run = running_run_of(MODEL, version)
    wait_for_task_run(run.id, "benchmark")
    production.stop("prefect-api-1")
    try:
        twin, seconds = wait_for_complete_twin(MODEL, version)
        [finished] = final_runs_of(MODEL, version, expected_at_least=1)
    finally:
        production.start("prefect-api-1")
    print(f"\nreplica 1 stopped while {run.name} converted: twin after {seconds:.0f} s more")
    assert finished.id == run.id and finished.state.is_completed(), finished.state
    assert twins_of(MODEL, version) == [twin.version]


def kill_worker_running(production: ProductionStack, flow_run_pid: int) -> str:
    """SIGKILL the worker whose flow-run process this is, with every process under it (a lost machine)."""
    for name in production.services:
        if name.startswith("worker-") and (pid := production.running_pid(name)):
            tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            if flow_run_pid in {process.pid for process in tree}:
                for process in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):  # one that ended since it was listed
                        process.send_signal(signal.SIGKILL)
                psutil.wait_procs(tree, timeout=10)
                return name
    raise AssertionError(f"no worker runs flow-run process {flow_run_pid}")


def test_worker_killed_mid_conversion_the_version_is_swept_to_exactly_one_complete_twin(
        production: ProductionStack) -> None:
    from prefect.deployments import run_deployment

    from onnx_stage.config import load_config

    # A conversion takes seconds (warm engine): this one times the twin for long enough to be killed holding its lease
    with event_conversions_with(["benchmark.enabled=true", "benchmark.min_seconds=30"]):
        with as_user(*SCIENTIST):
            version = train_as(MODEL, seed=24)
        run = running_run_of(MODEL, version)
    wait_for_task_run(run.id, "benchmark")  # converted, validated, the lease held
    killed = kill_worker_running(production, int(str(run.infrastructure_pid).rsplit(":", 1)[-1]))
    production.start(killed)

    config = load_config(overrides=[*FAST_OVERRIDES, "sweep.min_age_minutes=0", f"sweep.model_name_pattern={MODEL}"])
    started = time.monotonic()
    sweep = run_deployment("sweep-unconverted-versions/sweep", parameters={"config": config.model_dump(mode="json")},
                           timeout=900)
    print(f"\n{killed} killed during {run.name}; the sweep finished the version in {time.monotonic() - started:.0f} s")
    assert sweep.state.is_completed(), sweep.state.message
    assert len(twins_of(MODEL, version)) == 1
    assert len(twins_of(MODEL, version, complete_only=False)) == 1  # a half-made one was finished or replaced


def test_one_conversion_runs_in_a_container_of_the_worker_image(stack_and_image: tuple[ContainerStack, Future]) -> None:
    from prefect.deployments import run_deployment

    stack, building = stack_and_image
    image = stack.up_containers(building.result(timeout=900))
    with bridge_down(stack), as_user(*SCIENTIST):  # no webhook: the container's run is the only one
        version = train_as(MODEL, seed=25)
    started = time.monotonic()
    run = run_deployment(DOCKER_DEPLOYMENT, parameters={"model_name": MODEL, "version": version}, timeout=900)
    print(f"\nconversion in a container of {image}: {time.monotonic() - started:.0f} s")

    state = run.state
    assert state.is_completed(), state.message
    assert "mlflow_tracking_password" not in str(run.job_variables)  # credentials by reference (a mounted file)
    assert run.work_pool_name == DOCKER_POOL
    assert len(twins_of(MODEL, version)) == 1
