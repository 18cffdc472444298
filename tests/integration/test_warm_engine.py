"""The warm engine (flows/warm_engine.py) and its flow-run command (flows/engine_client.py) against a real Prefect
server: a flow run handed over runs in the ready process with the client's environment, working directory and
standard streams, ends with the same exit code as under `python -m prefect.engine`, and is stopped with its client."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deployment(stage: str) -> str:
    from tests.integration.engine_flows import report_process

    report_process.to_deployment(name="warm-engine-test").apply()
    return "report-process/warm-engine-test"


@pytest.fixture()
def engine(prefect: None, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A warm engine whose 'worker command' is a sleep: the test plays the worker and starts the clients itself."""
    socket_path = tmp_path / "engine.sock"
    process = subprocess.Popen([sys.executable, "-m", "onnx_stage.flows.warm_engine", "--socket", str(socket_path),
                                "--", "sleep", "600"], cwd=ROOT, env=client_env())
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the engine did not open its socket"
        time.sleep(0.1)
    yield process, socket_path
    process.terminate()
    assert process.wait(timeout=30) == 128 + signal.SIGTERM


def client_env(**extra: str) -> dict[str, str]:
    """The worker's environment (pytest's per-phase variable left out: a worker's does not change between runs)."""
    worker = {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}
    return {**worker, "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}


def start_client(deployment: str, report: Path, socket_path: Path | str, run_env: dict[str, str] | None = None,
                 **parameters: object) -> subprocess.Popen:
    """What a process worker does for a flow run of a deployment whose command is the stage's engine client: the
    worker's environment (here the engine's), the flow run's id, and the deployment's own variables (`run_env`)."""
    flow_run = run_deployment(deployment, parameters={"report": str(report), **parameters}, timeout=0)
    env = client_env(PREFECT__FLOW_RUN_ID=str(flow_run.id), ONNX_STAGE_ENGINE_SOCKET=str(socket_path),
                     **(run_env or {}))
    process = subprocess.Popen([sys.executable, "-m", "onnx_stage.flows.engine_client"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process.flow_run_id = flow_run.id  # type: ignore[attr-defined]
    return process


def state_of(flow_run_id: object) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.type.value


def test_a_handed_over_run_runs_in_the_ready_process_as_the_worker_started_it(
        deployment: str, engine: tuple[subprocess.Popen, Path], tmp_path: Path) -> None:
    process, socket_path = engine
    client = start_client(deployment, tmp_path / "report.json", socket_path)
    output, _ = client.communicate(timeout=300)

    report = json.loads((tmp_path / "report.json").read_text())
    assert client.returncode == 0, output
    assert report["ppid"] == process.pid and report["pid"] != client.pid  # the engine's ready process ran it
    assert report["cwd"] == str(ROOT)
    assert report["prestarted"] is True  # KerasWorker.open() in the flow got the child started ahead
    assert report["retries"] == "6"  # the stage's environment defaults apply to the run's environment too
    assert "Finished in state Completed" in output  # its logs reach the worker through the client's streams
    assert state_of(client.flow_run_id) == "COMPLETED"


def test_a_run_with_its_own_environment_gets_it_and_a_keras_child_started_in_it(
        deployment: str, engine: tuple[subprocess.Popen, Path], tmp_path: Path) -> None:
    process, socket_path = engine
    client = start_client(deployment, tmp_path / "report.json", socket_path,
                          run_env={"ENGINE_TEST_MARKER": "from-the-deployment"})
    output, _ = client.communicate(timeout=300)

    report = json.loads((tmp_path / "report.json").read_text())
    assert client.returncode == 0, output
    assert report["ppid"] == process.pid
    assert report["marker"] == "from-the-deployment"  # the flow run's environment, not the engine's
    assert report["prestarted"] is False  # the child started ahead lacks that variable: a new one is started


def test_without_an_engine_the_client_runs_prefects_engine_itself(deployment: str, tmp_path: Path) -> None:
    client = start_client(deployment, tmp_path / "report.json", tmp_path / "no-engine.sock")
    output, _ = client.communicate(timeout=300)

    assert client.returncode == 0, output
    assert json.loads((tmp_path / "report.json").read_text())["pid"] == client.pid  # exec'd python -m prefect.engine
    assert state_of(client.flow_run_id) == "COMPLETED"


def test_a_failing_run_exits_as_it_does_under_prefects_engine(
        deployment: str, engine: tuple[subprocess.Popen, Path], tmp_path: Path) -> None:
    _, socket_path = engine
    warm = start_client(deployment, tmp_path / "warm.json", socket_path, fail=True)
    warm_output, _ = warm.communicate(timeout=300)
    cold = start_client(deployment, tmp_path / "cold.json", tmp_path / "no-engine.sock", fail=True)
    cold_output, _ = cold.communicate(timeout=300)

    assert json.loads((tmp_path / "warm.json").read_text())["ppid"] == engine[0].pid
    assert warm.returncode == cold.returncode, (warm_output, cold_output)
    assert state_of(warm.flow_run_id) == state_of(cold.flow_run_id) == "FAILED"
    assert "asked to fail" in warm_output


def test_a_terminated_client_takes_its_run_with_it(
        deployment: str, engine: tuple[subprocess.Popen, Path], tmp_path: Path) -> None:
    _, socket_path = engine
    report = tmp_path / "report.json"
    client = start_client(deployment, report, socket_path, sleep_seconds=120)
    deadline = time.monotonic() + 120
    while not report.exists():
        assert time.monotonic() < deadline and client.poll() is None, "the run did not start"
        time.sleep(0.2)
    run_pid = json.loads(report.read_text())["pid"]

    client.send_signal(signal.SIGTERM)  # what a process worker does to cancel a run
    client.communicate(timeout=60)

    assert client.returncode != 0
    assert not Path(f"/proc/{run_pid}").exists()  # the run's process ended; the engine reaped it
