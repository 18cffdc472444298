"""The local production stack on 127.0.0.1: mlflow server, prefect server, a worker on the pool, the webhook bridge.

    python -m deployments.stack up     # start what is not running, register the MLflow webhook, deploy
    python -m deployments.stack down   # stop all four (and the production profile's services, if running)
    python -m deployments.stack up --profile production   # PostgreSQL, S3, auth, replicas: deployments/production.py

State (databases, artifacts, logs, pid files, the generated secrets) lives in $ONNX_STAGE_HOME/stack.
Ports: ONNX_STAGE_MLFLOW_PORT (5000), ONNX_STAGE_PREFECT_PORT (4200), ONNX_STAGE_BRIDGE_PORT (8787),
ONNX_STAGE_WORKER_PORT (8788, the worker's health check).
"""
from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from deployments.servers import (
    BIN, MLFLOW_SERVER_ENV, launch, mlflow_server_command, prefect_server_command, prefect_server_env, stop_group,
    wait_until_healthy, warm_worker,
)
from onnx_stage.tracking import stage_home

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORK_POOL = "onnx-stage"
WEBHOOK_NAME = "onnx-stage-bridge"
SERVICES = ("mlflow", "prefect", "worker", "bridge")  # start order; stopped in reverse


class StackError(RuntimeError):
    pass


Health = str | Callable[[], bool]  # a URL that answers 200 when the service is up, or a probe


@dataclass(frozen=True)
class Stack:
    state_dir: Path
    mlflow_port: int = 5000
    prefect_port: int = 4200
    bridge_port: int = 8787
    worker_port: int = 8788
    services: ClassVar[tuple[str, ...]] = SERVICES  # start order; stopped in reverse

    @classmethod
    def from_env(cls) -> "Stack":
        ports = {}
        for field, variable in [("mlflow_port", "ONNX_STAGE_MLFLOW_PORT"), ("prefect_port", "ONNX_STAGE_PREFECT_PORT"),
                                ("bridge_port", "ONNX_STAGE_BRIDGE_PORT"), ("worker_port", "ONNX_STAGE_WORKER_PORT")]:
            if raw := os.environ.get(variable):
                if not raw.isdigit():
                    raise StackError(f"{variable}={raw!r} is not a port number; set it to e.g. 5001 or unset it")
                ports[field] = int(raw)
        return cls(state_dir=stage_home() / "stack", **ports)

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def bridge_url(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}/webhooks/mlflow"

    def new_secrets(self) -> dict[str, str]:
        """The secrets this profile generates (each made once, the first time it is missing)."""
        return {"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "ONNX_STAGE_WEBHOOK_SECRET": secrets.token_urlsafe(32)}

    def secrets(self) -> dict[str, str]:
        """Generated once into the 0600 secrets file and kept: a webhook stored under another key never fires again."""
        path = self.state_dir / "secrets.env"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        kept = dict(line.split("=", 1) for line in path.read_text().split())
        if missing := {key: value for key, value in self.new_secrets().items() if key not in kept}:
            with path.open("a") as stream:
                stream.writelines(f"{key}={value}\n" for key, value in missing.items())
        return {**kept, **missing}

    def client_env(self) -> dict[str, str]:
        """What a process needs to talk to this stack (the worker's flow runs, the bridge, a training script)."""
        return {"MLFLOW_TRACKING_URI": self.mlflow_uri, "PREFECT_API_URL": self.prefect_api,
                "ONNX_STAGE_HOME": str(self.state_dir.parent), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def service(self, name: str) -> tuple[list[str], dict[str, str], Health]:
        """command, environment and health URL of one service."""
        if name == "mlflow":
            env = {**MLFLOW_SERVER_ENV, "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                   "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                   "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": self.secrets()["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]}
            return mlflow_server_command(self.state_dir / "mlflow", self.mlflow_port), env, f"{self.mlflow_uri}/health"
        if name == "prefect":
            env = prefect_server_env(self.state_dir / "prefect", self.prefect_port)
            return prefect_server_command(self.prefect_port), env, f"{self.prefect_api}/health"
        if name == "worker":
            command, engine_env = warm_worker(
                [str(BIN / "prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process",
                 "--name", f"{WORK_POOL}-worker", "--with-healthcheck"], self.state_dir, name)
            env = {**self.client_env(), **engine_env, "PREFECT_HOME": str(self.state_dir / "prefect"),
                   "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "PREFECT_WORKER_WEBSERVER_PORT": str(self.worker_port),
                   "PREFECT_WORKER_QUERY_SECONDS": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
            return command, env, f"http://127.0.0.1:{self.worker_port}/health"
        if name == "bridge":
            command = [sys.executable, "-m", "deployments.bridge", "--port", str(self.bridge_port)]
            env = {**self.client_env(), "ONNX_STAGE_WEBHOOK_SECRET": self.secrets()["ONNX_STAGE_WEBHOOK_SECRET"]}
            return command, env, f"http://127.0.0.1:{self.bridge_port}/healthz"
        raise StackError(f"unknown service {name!r}; the stack runs {', '.join(self.services)}")

    def pid_file(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.pid"

    def running_pid(self, name: str) -> int | None:
        path = self.pid_file(name)
        if not path.exists():
            return None
        pid = int(path.read_text())
        try:
            alive_command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            alive_command = []
        # A recycled pid runs something else: never signal it.
        return pid if self.runs_service(name, alive_command) else None

    def runs_service(self, name: str, cmdline: list[bytes]) -> bool:
        """Whether a process with this /proc cmdline is the service (a console script runs as `python script args`)."""
        command, _, _ = self.service(name)
        expected_arguments = [part.encode() for part in command[1:]]
        return cmdline[-len(expected_arguments) - 1:-1] == expected_arguments

    def start(self, name: str, timeout_seconds: float = 180) -> None:
        if self.running_pid(name):
            return
        command, env, health = self.service(name)
        log = self.state_dir / "logs" / f"{name}.log"
        process = launch(command, log, env, cwd=PROJECT_ROOT)
        self.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
        self.pid_file(name).write_text(str(process.pid))
        wait_until_healthy(health, process, log, timeout_seconds)

    def stop(self, name: str) -> None:
        if pid := self.running_pid(name):
            stop_group(pid)
        self.pid_file(name).unlink(missing_ok=True)

    def register_webhook(self) -> str:
        """Create the MLflow webhook to the bridge, or bring the existing one up to date; returns its id."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.mlflow_uri, registry_uri=self.mlflow_uri)
        secret = self.secrets()["ONNX_STAGE_WEBHOOK_SECRET"]
        existing = [w for w in client.list_webhooks() if w.name == WEBHOOK_NAME]
        if existing:
            return client.update_webhook(existing[0].webhook_id, url=self.bridge_url, secret=secret,
                                         events=["model_version.created"], status="ACTIVE").webhook_id
        return client.create_webhook(WEBHOOK_NAME, self.bridge_url, events=["model_version.created"],
                                     secret=secret).webhook_id

    def deploy(self) -> None:
        subprocess.run([sys.executable, "-m", "deployments.deploy"], cwd=PROJECT_ROOT, check=True,
                       env={**os.environ, **self.client_env()})

    def up(self) -> None:
        self.start("mlflow")
        self.register_webhook()
        self.start("prefect")
        self.deploy()
        self.start("worker")
        self.start("bridge")

    def down(self) -> None:
        for name in reversed(self.services):
            self.stop(name)


def stacks(profile: str | None) -> list[Stack]:
    """The stacks a command acts on: the named profile's, or both (`down` with no profile stops whatever runs)."""
    from deployments.containers import ContainerStack  # the production stack, and its docker worker if started

    profiles = {"local": Stack.from_env, "production": ContainerStack.from_env}
    if profile is not None and profile not in profiles:
        raise StackError(f"unknown profile {profile!r}; use one of {', '.join(profiles)}")
    return [profiles[name]() for name in ([profile] if profile else profiles)]


def summary(stack: Stack) -> str:
    if hasattr(stack, "summary"):
        return stack.summary()
    return f"""
MLflow     {stack.mlflow_uri}   (webhook {WEBHOOK_NAME} -> {stack.bridge_url})
Prefect UI {stack.prefect_api.removesuffix('/api')}/deployments   (pool {WORK_POOL}: convert, on-new-model-version, sweep)
Logs       {stack.state_dir / 'logs'}
Use it:    export MLFLOW_TRACKING_URI={stack.mlflow_uri} PREFECT_API_URL={stack.prefect_api}"""


def main(argv: list[str] | None = None) -> int:
    """`up [--profile local|production]` (local by default) or `down [--profile ...]` (both by default)."""
    arguments = argv if argv is not None else sys.argv[1:]
    command = arguments[:1]
    profile = arguments[2] if len(arguments) == 3 and arguments[1] == "--profile" else None
    if command not in (["up"], ["down"]) or len(arguments) not in (1, 3) or (len(arguments) == 3 and not profile):
        print("usage: python -m deployments.stack up|down [--profile local|production]", file=sys.stderr)
        return 2
    def up() -> str:
        stack = stacks(profile or "local")[0]
        stack.up()
        return summary(stack)

    def down() -> str:
        for stack in stacks(profile):
            stack.down()
        return "stack stopped"

    return run_command("stack", up if command == ["up"] else down)


def run_command(name: str, action: Callable[[], str]) -> int:
    """Run one command of a stack script: its result on stdout and exit code 0, or one error line and 1."""
    try:
        print(action())
    except (StackError, RuntimeError, subprocess.CalledProcessError) as error:
        print(f"onnx-stage {name}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
