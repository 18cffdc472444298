"""Start real local servers (mlflow server, prefect server) on 127.0.0.1, for tests, benchmarks and the stack."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_ok(url: str) -> bool:
    """True when GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until_healthy(health: str | Callable[[], bool], process: subprocess.Popen, log: Path,
                       timeout_seconds: float) -> None:
    """Wait until `health` (a URL answering 200, or a probe returning True) says the server is up."""
    probe = health if callable(health) else (lambda: http_ok(health))
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        if probe():
            return
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{health if isinstance(health, str) else log.stem} not healthy after {timeout_seconds:.0f} s; "
                       f"see {log}")


def launch(command: list[str], log: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen:
    """Start a server in its own process group (so stop() also ends whatever it spawned), output to log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as log_stream:
        return subprocess.Popen(command, stdout=log_stream, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def stop_group(pid: int, timeout_seconds: float = 20) -> None:
    """SIGTERM the process group a launch()ed server leads, SIGKILL it if still there after the timeout."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            _reap(pid)
            time.sleep(0.2)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@contextmanager
def running(command: list[str], health_url: str, log: Path, env: dict[str, str] | None = None,
            timeout_seconds: float = 120, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    process = launch(command, log, env, cwd)
    try:
        wait_until_healthy(health_url, process, log, timeout_seconds)
        yield process
    finally:
        stop_group(process.pid)


# MLflow's server otherwise starts a job runner and seven huey consumers (~2 GB, GenAI jobs) the stage never uses
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_server_command(state_dir: Path, port: int) -> list[str]:
    return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{state_dir / 'mlflow.db'}",
            "--artifacts-destination", str(state_dir / "artifacts")]


def prefect_server_env(state_dir: Path, port: int) -> dict[str, str]:
    api = f"http://127.0.0.1:{port}/api"
    # The UI asks PREFECT_UI_API_URL for its API; unset, it looks for port 4200 whatever --port says.
    return {"PREFECT_HOME": str(state_dir), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": api, "PREFECT_API_URL": api}


def prefect_server_command(port: int) -> list[str]:
    return [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


@contextmanager
def mlflow_server(state_dir: Path, port: int | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow server` on a sqlite store in state_dir; yields its tracking URI."""
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with running(mlflow_server_command(state_dir, port), f"{url}/health", state_dir / "mlflow-server.log",
                 {**MLFLOW_SERVER_ENV, **(env or {})}):
        yield url


@contextmanager
def prefect_server(state_dir: Path, port: int | None = None) -> Iterator[str]:
    """`prefect server start` with its own PREFECT_HOME in state_dir; yields its API URL."""
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    env = prefect_server_env(state_dir, port)
    with running(prefect_server_command(port), f"{env['PREFECT_API_URL']}/health", state_dir / "prefect-server.log",
                 env, timeout_seconds=180):
        yield env["PREFECT_API_URL"]


def warm_worker(worker_command: list[str], state_dir: Path, name: str) -> tuple[list[str], dict[str, str]]:
    """A process worker run under the stage's warm engine (flows/warm_engine.py): the command, and the environment
    the deployments' flow-run command `python -m onnx_stage.flows.engine_client` needs (this environment's python
    first on PATH, as in an activated virtual environment)."""
    # A Unix socket path holds at most 107 bytes; a stack's state directory can be deeper than that
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    socket_path = Path(tempfile.gettempdir()) / f"onnx-stage-{digest}-{name}.sock"
    command = [sys.executable, "-m", "onnx_stage.flows.warm_engine", "--socket", str(socket_path), "--",
               *worker_command]
    return command, {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
