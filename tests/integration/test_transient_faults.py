"""Transient faults during a real `onnx-stage convert`: the MLflow server stopped for a few seconds and restarted
(the run rides it out on MLflow's bounded retries and registers one complete twin), and a full scratch disk (one
error line, the registry untouched)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.servers import free_port, launch, mlflow_server_command, stop_group, wait_until_healthy
from cli_helpers import ONNX_STAGE, cli_env, registry_snapshot

BUILD = '''
import sys, keras
inputs = keras.Input((16,), name="features")
x = keras.layers.Dense(32, activation="tanh", name="hidden")(inputs)
keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="probs")(x)).save(sys.argv[1])
'''
FAST = ["--set", "benchmark.enabled=false"]


class RestartableMlflow:
    """An `mlflow server` on a fixed port and store that a test can stop and start again."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir, self.port = state_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.state_dir / "mlflow-server.log"
        self.process = launch(mlflow_server_command(self.state_dir, self.port), log)
        wait_until_healthy(f"{self.url}/health", self.process, log, timeout_seconds=120)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process.pid)
            self.process = None


@pytest.fixture()
def own_mlflow(tmp_path: Path, stage: str) -> Iterator[RestartableMlflow]:
    """A second MLflow server (the session's one stays up for the other tests), as the tracking URI of this test."""
    import mlflow

    server = RestartableMlflow(tmp_path / "mlflow")
    server.state_dir.mkdir()
    server.start()
    mlflow.set_tracking_uri(server.url)
    mlflow.set_registry_uri(server.url)
    try:
        yield server
    finally:
        server.stop()
        mlflow.set_tracking_uri(stage)
        mlflow.set_registry_uri(stage)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("transient") / "mlp.keras"
    subprocess.run([sys.executable, "-c", BUILD, str(path)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return path


def register_source(name: str, keras_file: Path) -> str:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_experiment("transient-faults")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(keras_file), artifact_path="model")
    return MlflowClient().create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id).version


def test_mlflow_server_restarted_during_a_run_gives_one_complete_twin(
        own_mlflow: RestartableMlflow, keras_file: Path) -> None:
    """The server goes away when the served-options check finishes (Prefect logs it), so registration meets the
    outage (stopping it after load instead was measured too: the twin lookup and packaging ride it out as well)."""
    after_task = "check-served-parity"
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("blip")
    version = register_source("blip", keras_file)
    process = subprocess.Popen([ONNX_STAGE, "convert", "--model", "blip", "--version", version, *FAST],
                               env=cli_env(own_mlflow.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, outage, outage_seconds = [], threading.Event(), []

    def read_log() -> None:  # stop the server when the task has finished, start it again 3 s later
        for line in process.stdout:
            seen.append(line)
            if not outage.is_set() and re.search(rf"Task run '{after_task}-\w+' - Finished in state Completed", line):
                outage.set()
                started = time.monotonic()
                own_mlflow.stop()
                time.sleep(3)
                own_mlflow.start()
                outage_seconds.append(time.monotonic() - started)

    reader = threading.Thread(target=read_log)
    reader.start()
    stderr = process.stderr.read()
    process.wait(timeout=600)
    reader.join(timeout=60)

    assert outage.is_set(), "".join(seen)[-3000:]
    assert process.returncode == 0, (f"server away {outage_seconds} s", stderr[-3000:])
    assert stderr == ""
    twins = client.search_model_versions("name='blip-onnx'")
    assert len(twins) == 1 and twins[0].tags["onnx_stage.twin_of"] == f"blip/{version}"
    assert client.get_model_version("blip", version).tags["onnx_stage.onnx_twin"] == f"models:/blip-onnx/1"


def test_a_full_scratch_disk_fails_with_one_line_and_registers_nothing(
        stage: str, keras_file: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("full-disk")
    version = register_source("full-disk", keras_file)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch)], check=True)
    try:
        (scratch / "filler").write_bytes(b"\0" * (1024 * 1024 - 8 * 1024))  # 8 KiB left: less than the model
        before = registry_snapshot()
        completed = subprocess.run([ONNX_STAGE, "convert", "--model", "full-disk", "--version", version,
                                    *FAST], env=cli_env(stage, TMPDIR=str(scratch)), capture_output=True, text=True,
                                   timeout=300)
        after = registry_snapshot()
    finally:
        subprocess.run(["umount", "--lazy", str(scratch)], check=True)

    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 1 and len(lines) == 1, completed.stderr[-3000:]
    assert lines[0].startswith("onnx-stage: error: ") and "No space left on device" in lines[0]
    assert f"point TMPDIR at a disk with room (scratch files go to {scratch})" in lines[0]
    assert "Traceback" not in completed.stdout
    assert after == before
