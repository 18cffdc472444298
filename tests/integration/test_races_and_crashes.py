"""Exactly one complete twin per source version and settings, whatever races and crashes: two `onnx-stage convert`
runs of one version started at once (the embedded defaults: a file lock), and a run killed (SIGKILL) at several
moments then run again: on Prefect's ephemeral server (the file lock dies with its holder) and once against a real
`prefect server` (the killed holder stops renewing its concurrency lease; the server frees it when it expires)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from deployments.servers import BIN, prefect_server

CLI = [str(BIN / "onnx-stage"), "convert"]
QUICK = ["--set", "benchmark.enabled=false", "--set", "registry.lease_seconds=60"]  # Prefect's shortest lease


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return {**env, "ONNX_STAGE_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), **extra}


def complete_twins(name: str) -> list:
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        return []
    return client.search_model_versions(f"name='{name}'")


def test_two_runs_of_one_version_at_once_make_one_twin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From two terminals on the embedded defaults (sqlite MLflow, Prefect's ephemeral server each)."""
    from onnx_stage.flows.train_demo import train_and_register

    home = tmp_path / "home"
    store = f"sqlite:///{home / 'mlflow.db'}"
    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()  # train_and_register points both at the store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("ONNX_STAGE_HOME", str(home))
    try:
        version = train_and_register.fn(name="digits-race", alias="champion", epochs=1, seed=3)
        env = {k: v for k, v in cli_env(home).items() if k != "MLFLOW_TRACKING_URI"}
        runs = [subprocess.Popen([*CLI, "--model", "digits-race", "--version", version, *QUICK], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outputs = [run.communicate(timeout=900)[0] for run in runs]

        assert [run.returncode for run in runs] == [0, 0], outputs
        mlflow.set_tracking_uri(store)
        (twin,) = complete_twins("digits-race-onnx")
        assert twin.tags["onnx_stage.complete"] == "true"
        # converted by version number, the source's alias is mirrored all the same
        assert MlflowClient().get_model_version_by_alias("digits-race-onnx", "champion").version == twin.version
        finals = sorted(re.findall(r"digits-race-onnx version (\d+) \((.*?)\)", "".join(outputs)))
        assert finals == [(str(twin.version), "already registered, nothing new created"),
                          (str(twin.version), "registered")]

        # a twin registered before the completion marker existed carries none: it counts as complete, never deleted
        MlflowClient().delete_model_version_tag("digits-race-onnx", twin.version, "onnx_stage.complete")
        again = subprocess.run([*CLI, "--model", "digits-race", "--version", version, *QUICK], env=env,
                               capture_output=True, text=True, timeout=900)
        assert again.returncode == 0 and "(already registered, nothing new created)" in again.stdout, again.stdout
        log = again.stdout + again.stderr
        assert "Task run 'find-existing-twin" in log and "Task run 'load-" not in log, log  # no Keras load for it
        assert [v.version for v in complete_twins("digits-race-onnx")] == [twin.version]
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as api:
        yield api


KILL_POINTS = {  # the moment, and the task whose completion (in the run's log) marks it
    "after load": "load",
    "during convert": "choose-validation-inputs",
    "during validate": "convert",
    "between register and publish": "register",
}


@pytest.mark.parametrize(("moment", "prefect_backend"), [("after load", "ephemeral"), ("during convert", "ephemeral"),
                                                 ("between register and publish", "ephemeral"),
                                                 ("during validate", "server")])
def test_a_run_killed_at_any_moment_then_rerun_leaves_one_complete_twin(
        digits_model: str, tmp_path: Path, request: pytest.FixtureRequest, moment: str, prefect_backend: str) -> None:
    twin_name = f"digits-mlp-crash-{KILL_POINTS[moment]}-onnx"
    command = [*CLI, "--model", "digits-mlp", "--version", digits_model, *QUICK,
               "--set", f"registry.name_template={{name}}-crash-{KILL_POINTS[moment]}-onnx"]
    server = {"PREFECT_API_URL": request.getfixturevalue("prefect_api")} if prefect_backend == "server" else {}
    env = cli_env(tmp_path, **server)
    finished = re.compile(rf"Task run '{re.escape(KILL_POINTS[moment])}-[0-9a-f]+' - Finished in state Completed")
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    log = []
    for line in run.stdout:
        log.append(line)
        if finished.search(line):
            os.killpg(run.pid, signal.SIGKILL)  # the CLI, its Keras child and whatever else it started
            break
    run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL, "".join(log[-20:])
    if moment == "between register and publish":
        (half_made,) = complete_twins(twin_name)
        assert half_made.tags["onnx_stage.complete"] == "false"  # registered, never completed

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)

    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr
    (twin,) = complete_twins(twin_name)  # the half-made one (if any) was removed, one complete twin made
    assert twin.tags["onnx_stage.complete"] == "true"
    assert f"{twin_name} version {twin.version} (registered)" in rerun.stdout
    answer = mlflow.pyfunc.load_model(f"models:/{twin_name}/{twin.version}").predict(np.zeros((2, 64), np.float32))
    assert answer.shape == (2, 10)
