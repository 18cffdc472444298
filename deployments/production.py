"""The production-shaped stack on 127.0.0.1: what platform teams run, started from this machine's own packages.

    python -m deployments.stack up --profile production     # or: make stack-up PROFILE=production
    python -m deployments.stack down                         # or: make stack-down

PostgreSQL (databases mlflow, mlflow_auth, prefect), SeaweedFS S3 (one bucket), Redis, `mlflow server` on PostgreSQL
with artifacts proxied to S3 and basic-auth, Prefect migrations then two API replicas behind nginx plus one services
process on Redis messaging and lease storage, two process workers and the webhook bridge. State — databases, objects,
logs, pid files, the 0600 secrets file — lives in $ONNX_STAGE_HOME/production. Ports: ONNX_STAGE_PRODUCTION_PORT
(default 15400) and the 15 ports above it; SeaweedFS' gRPC ports are those + 10000.
"""
from __future__ import annotations

import configparser
import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

from deployments.servers import warm_worker
from deployments.stack import BIN, Health, Stack, StackError
from onnx_stage.tracking import stage_home

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
BUCKET = "onnx-stage"
ADMIN_USER = "admin"
STAGE_USER = "onnx-stage"  # the workers' and the bridge's MLflow user
STAGE_ROLE = "onnx-stage-converter"
DATABASE_ROLE = "onnx_stage"
DATABASES = ("mlflow", "mlflow_auth", "prefect")
WORKERS = 2
WORKER_FLOW_RUN_LIMIT = 2  # flow runs one worker runs at once: a sweep and the conversion it started fit on one
# Debian package → the program the stack needs from it (.ci/run installs them on a clean machine).
APT_PROGRAMS = {"postgresql-15": POSTGRES_BIN / "initdb", "redis-server": Path("/usr/bin/redis-server"),
                "nginx-light": Path("/usr/sbin/nginx")}
PORT_OFFSETS = {"postgres": 0, "redis": 1, "s3": 2, "mlflow": 3, "prefect": 4, "prefect-api-1": 5, "prefect-api-2": 6,
                "bridge": 7, "worker-1": 8, "worker-2": 9, "weed-master": 10, "weed-volume": 11, "weed-filer": 12,
                "weed-admin": 13, "weed-s3-grpc": 14, "weed-metrics": 15, "mlflow-server": 16}


def tcp_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def free_port_block() -> int:
    """A base port whose whole block (and SeaweedFS' gRPC ports, +10000) is free on 127.0.0.1: for a second stack
    beside one on the default ports (tests, benchmarks)."""
    grpc = [PORT_OFFSETS[name] + 10000 for name in ("weed-master", "weed-volume", "weed-filer", "weed-admin")]
    for _ in range(50):
        base = random.randrange(20000, 29000, 20)
        try:
            for offset in [*PORT_OFFSETS.values(), *grpc]:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise StackError("no free block of ports between 20000 and 29000; stop some servers or set the ports yourself")


def missing_programs() -> list[str]:
    """The Debian packages whose programs the production stack needs and does not find."""
    return [package for package, program in APT_PROGRAMS.items() if not program.exists()]


@dataclass(frozen=True)
class ProductionStack(Stack):
    base_port: int = 15400
    services: ClassVar[tuple[str, ...]] = (
        "postgres", "s3", "redis", "mlflow", "mlflow-proxy", "prefect-api-1", "prefect-api-2", "prefect-services", "prefect",
        *(f"worker-{n}" for n in range(1, WORKERS + 1)), "bridge")

    @classmethod
    def from_env(cls) -> "ProductionStack":
        raw = os.environ.get("ONNX_STAGE_PRODUCTION_PORT", "15400")
        if not raw.isdigit():
            raise StackError(f"ONNX_STAGE_PRODUCTION_PORT={raw!r} is not a port number; set it to e.g. 15400 "
                             "or unset it")
        return cls.at(stage_home() / "production", int(raw))

    @classmethod
    def at(cls, state_dir: Path, base_port: int) -> "ProductionStack":
        return cls(state_dir=state_dir, base_port=base_port, mlflow_port=base_port + PORT_OFFSETS["mlflow"],
                   prefect_port=base_port + PORT_OFFSETS["prefect"], bridge_port=base_port + PORT_OFFSETS["bridge"],
                   worker_port=base_port + PORT_OFFSETS["worker-1"])

    def port(self, name: str) -> int:
        return self.base_port + PORT_OFFSETS[name]

    def replica_api(self, replica: int) -> str:
        """One API replica's address, bypassing nginx (tests announce through each)."""
        return f"http://127.0.0.1:{self.port(f'prefect-api-{replica}')}/api"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port('s3')}"

    def new_secrets(self) -> dict[str, str]:
        return {**super().new_secrets(), **{key: secrets.token_urlsafe(24) for key in (
            "POSTGRES_SUPERUSER_PASSWORD", "POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_STAGE_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY", "S3_SECRET_ACCESS_KEY")},
            "S3_ACCESS_KEY_ID": "onnxstage" + secrets.token_hex(6)}

    def database_url(self, database: str, driver: str = "psycopg") -> str:
        password = self.secrets()["POSTGRES_PASSWORD"]
        return f"postgresql+{driver}://{DATABASE_ROLE}:{password}@127.0.0.1:{self.port('postgres')}/{database}"

    def client_env(self) -> dict[str, str]:
        """A stage process (worker, bridge, flow run): MLflow as the stage user, Prefect through the load balancer."""
        return {**super().client_env(), "MLFLOW_TRACKING_USERNAME": STAGE_USER,
                "MLFLOW_TRACKING_PASSWORD": self.secrets()["MLFLOW_STAGE_PASSWORD"]}

    def mlflow_credentials_file(self) -> Path:
        """The stage user's MLflow login as MLflow's client reads it from ~/.mlflow/credentials (mode 0600): what a
        container mounts instead of holding the password in its environment or in Prefect."""
        path = self.state_dir / "mlflow-credentials"
        path.touch(mode=0o600)
        path.write_text(f"[mlflow]\nmlflow_tracking_username = {STAGE_USER}\n"
                        f"mlflow_tracking_password = {self.secrets()['MLFLOW_STAGE_PASSWORD']}\n")
        return path

    def s3_client(self):  # -> botocore S3 client
        """boto3 S3 client with the stack's keys (only the MLflow server and tests hold them)."""
        import boto3

        keys = self.secrets()
        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id=keys["S3_ACCESS_KEY_ID"],
                            aws_secret_access_key=keys["S3_SECRET_ACCESS_KEY"])

    def prefect_server_env(self) -> dict[str, str]:
        redis = self.port("redis")
        return {"PREFECT_HOME": str(self.state_dir / "prefect-server"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url("prefect", "asyncpg"),
                "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
                "PREFECT_UI_API_URL": self.prefect_api, "PREFECT_API_URL": self.prefect_api,
                "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
                "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
                "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
                "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
                "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1", "PREFECT_REDIS_MESSAGING_PORT": str(redis),
                "PREFECT_REDIS_MESSAGING_DB": "0", "PREFECT_SERVER_DOCKET_URL": f"redis://127.0.0.1:{redis}/1",
                # prefect-redis publishes in batches of 5 or every 10 s: one event (a registered version) waited up
                # to 10 s before the triggers service saw it (4-7 s measured). One message per publish instead.
                "PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE": "1"}

    def service(self, name: str) -> tuple[list[str], dict[str, str], Health]:
        """command, environment and health check of one service."""
        if name == "postgres":
            command = [*self.as_postgres(), str(POSTGRES_BIN / "postgres"), "-D", str(self.postgres_dir),
                       "-c", "listen_addresses=127.0.0.1", "-p", str(self.port("postgres")),
                       "-c", "unix_socket_directories=", "-c", "max_connections=300"]
            return command, {}, lambda: self.postgres_ready()
        if name == "s3":
            return self.seaweedfs_command(), {}, lambda: self.bucket_ready()
        if name == "redis":
            command = ["/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(self.port("redis")),
                       "--save", "", "--appendonly", "no", "--dir", str(self.state_dir)]
            return command, {}, lambda: tcp_open(self.port("redis"))
        if name == "mlflow":
            return self.mlflow_command(), self.mlflow_env(), f"http://127.0.0.1:{self.port('mlflow-server')}/health"
        if name == "mlflow-proxy":
            return self.mlflow_proxy_command(), {}, f"{self.mlflow_uri}/health"
        if name.startswith("prefect-api-"):
            port = self.port(name)
            command = [str(BIN / "prefect"), "server", "start", "--no-services", "--host", "127.0.0.1",
                       "--port", str(port)]
            return command, self.prefect_server_env(), f"http://127.0.0.1:{port}/api/health"
        if name == "prefect-services":
            started = time.monotonic()
            return ([str(BIN / "prefect"), "server", "services", "start"], self.prefect_server_env(),
                    lambda: time.monotonic() - started > 8)  # no health endpoint: alive 8 s after its start
        if name == "prefect":
            return self.nginx_command(), {}, f"{self.prefect_api}/health"
        if name.startswith("worker-"):
            command, engine_env = warm_worker(
                [str(BIN / "prefect"), "worker", "start", "--pool", "onnx-stage", "--type", "process",
                 "--name", f"onnx-stage-{name}", "--limit", str(WORKER_FLOW_RUN_LIMIT), "--with-healthcheck"],
                self.state_dir, name)
            env = {**self.client_env(), **engine_env, "PREFECT_HOME": str(self.state_dir / f"prefect-{name}"),
                   "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "PREFECT_WORKER_WEBSERVER_PORT": str(self.port(name)),
                   "PREFECT_WORKER_QUERY_SECONDS": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
            return command, env, f"http://127.0.0.1:{self.port(name)}/health"
        return super().service(name)

    def runs_service(self, name: str, cmdline: list[bytes]) -> bool:
        """PostgreSQL, Redis and nginx rewrite their process titles: match on what stays in them."""
        joined = b" ".join(cmdline)
        if name == "postgres":
            return str(self.postgres_dir).encode() in joined and b"postgres" in joined
        if name == "redis":
            return f"127.0.0.1:{self.port('redis')}".encode() in joined and b"redis-server" in joined
        if name in ("prefect", "mlflow-proxy"):
            return str(self.nginx_config(name)).encode() in joined and b"nginx" in joined
        return super().runs_service(name, cmdline)

    def start(self, name: str, timeout_seconds: float = 180) -> None:
        """Start one service unless it runs, and say how long it took."""
        started = time.monotonic()
        running = self.running_pid(name)
        super().start(name, timeout_seconds)
        if not running:
            print(f"{name}: up in {time.monotonic() - started:.1f} s", flush=True)

    def stop(self, name: str) -> None:
        started = time.monotonic()
        super().stop(name)
        if time.monotonic() - started > 5:
            print(f"{name}: stopped in {time.monotonic() - started:.1f} s", flush=True)

    # PostgreSQL -------------------------------------------------------------------------------------------------
    @property
    def postgres_dir(self) -> Path:
        return self.state_dir / "postgres"

    @staticmethod
    def as_postgres() -> list[str]:
        """PostgreSQL refuses to run as root: drop to the `postgres` user when we are root."""
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]

    def init_postgres(self) -> None:
        """initdb once, password (scram) auth on 127.0.0.1 only; the superuser password is in the secrets file."""
        if (self.postgres_dir / "PG_VERSION").exists():
            return
        self.postgres_dir.mkdir(parents=True, exist_ok=True)
        password_file = self.state_dir / "run" / "pg-superuser"
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(self.secrets()["POSTGRES_SUPERUSER_PASSWORD"])
        if os.geteuid() == 0:
            for path in (self.postgres_dir, password_file):
                shutil.chown(path, "postgres", "postgres")
            password_file.chmod(0o600)
            self._let_postgres_through(self.postgres_dir)
        try:
            subprocess.run([*self.as_postgres(), str(POSTGRES_BIN / "initdb"), "-D", str(self.postgres_dir),
                            "-U", "postgres", "--pwfile", str(password_file), "--auth-host=scram-sha-256",
                            "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale"],
                           check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as error:
            raise StackError(f"initdb {self.postgres_dir} failed: {error.stderr.strip()[-500:]}") from None
        finally:
            password_file.unlink(missing_ok=True)

    @staticmethod
    def _let_postgres_through(path: Path) -> None:
        """The postgres user must traverse every directory above its data directory."""
        for parent in path.parents:
            if parent.stat().st_mode & 0o001 == 0:
                parent.chmod(parent.stat().st_mode | 0o001)

    def _superuser_connection(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port("postgres"), user="postgres", dbname=database,
                               password=self.secrets()["POSTGRES_SUPERUSER_PASSWORD"], autocommit=True,
                               connect_timeout=2)

    def postgres_ready(self) -> bool:
        try:
            with self._superuser_connection():
                return True
        except Exception:  # noqa: BLE001 — any failure to connect means not up yet
            return False

    def ensure_databases(self) -> None:
        """The stage's role (a password, no superuser) and its three databases, created once."""
        from psycopg import sql

        password = self.secrets()["POSTGRES_PASSWORD"]
        with self._superuser_connection() as connection:
            if not connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [DATABASE_ROLE]).fetchone():
                connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(DATABASE_ROLE), sql.Literal(password)))
            for database in DATABASES:
                if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
                    connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(DATABASE_ROLE)))

    # S3 ---------------------------------------------------------------------------------------------------------
    def seaweedfs_command(self) -> list[str]:
        keys = self.secrets()
        config = self.state_dir / "s3.json"
        config.touch(mode=0o600)
        config.write_text('{"identities": [{"name": "onnx-stage", "credentials": [{"accessKey": "%s", "secretKey": '
                          '"%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}'
                          % (keys["S3_ACCESS_KEY_ID"], keys["S3_SECRET_ACCESS_KEY"]))
        data = self.state_dir / "s3"
        data.mkdir(parents=True, exist_ok=True)
        p = self.port
        return [str(BIN / "weed"), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
                "-admin.ui=false", f"-s3.port={p('s3')}", f"-s3.port.grpc={p('weed-s3-grpc')}", f"-s3.config={config}",
                f"-bucket={BUCKET}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-master.port={p('weed-master')}",
                f"-volume.port={p('weed-volume')}", f"-filer.port={p('weed-filer')}", f"-admin.port={p('weed-admin')}",
                f"-metricsPort={p('weed-metrics')}", "-master.telemetry=false"]

    def bucket_ready(self) -> bool:
        try:
            self.s3_client().head_bucket(Bucket=BUCKET)
            return True
        except Exception:  # noqa: BLE001 — not up, or the bucket not created yet
            return False

    # MLflow -----------------------------------------------------------------------------------------------------
    def mlflow_command(self) -> list[str]:
        return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port("mlflow-server")),
                "--workers", "2", "--app-name", "basic-auth", "--serve-artifacts",
                "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts"]

    def mlflow_env(self) -> dict[str, str]:
        """Passwords reach the server through its environment and a 0600 ini file, never its command line."""
        keys = self.secrets()
        auth_config = self.state_dir / "mlflow-auth.ini"
        auth_config.touch(mode=0o600)
        parser = configparser.ConfigParser(interpolation=None)
        parser["mlflow"] = {"default_permission": "READ", "database_uri": self.database_url("mlflow_auth"),
                            "admin_username": ADMIN_USER,
                            "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
                            "grant_default_workspace_access": "false",
                            # MLflow checks the password (scrypt, ~80 ms of CPU here) several times per request:
                            # ~400 ms per API call, ~40 calls per conversion. Cached for a minute, per server worker;
                            # MLflow's own user-changing routes drop the cache entry at once.
                            "auth_cache_ttl_seconds": "60"}
        with auth_config.open("w") as stream:
            parser.write(stream)
        return {"MLFLOW_BACKEND_STORE_URI": self.database_url("mlflow"), "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                "MLFLOW_AUTH_ADMIN_PASSWORD": keys["MLFLOW_ADMIN_PASSWORD"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": keys["MLFLOW_FLASK_SERVER_SECRET_KEY"],
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint, "AWS_ACCESS_KEY_ID": keys["S3_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": keys["S3_SECRET_ACCESS_KEY"], "AWS_DEFAULT_REGION": "us-east-1",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": keys["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]}

    def auth_client(self, username: str = ADMIN_USER, password: str | None = None):  # -> AuthServiceClient
        """MLflow's user/permission client acting as `username` (the admin by default)."""
        from mlflow.server.auth.client import AuthServiceClient
        from mlflow.utils.rest_utils import MlflowHostCreds, http_request, verify_rest_response

        creds = MlflowHostCreds(self.mlflow_uri, username=username,
                                password=password or self.secrets()["MLFLOW_ADMIN_PASSWORD"])

        class Client(AuthServiceClient):
            def _request(self, endpoint, method, *, expected_status: int = 200, **kwargs):
                response = verify_rest_response(http_request(creds, endpoint, method, **kwargs), endpoint,
                                                expected_status=expected_status)
                return response.json() if response.content else {}

        return Client(self.mlflow_uri)

    def ensure_user(self, username: str, password: str) -> None:
        """Create an MLflow user unless it exists (its password is then left as it is)."""
        from mlflow.exceptions import RestException

        client = self.auth_client()
        try:
            client.get_user(username)
        except RestException:
            client.create_user(username, password)

    def ensure_stage_user(self) -> None:
        """The stage's user: reads every registered model (default READ) and may EDIT them — tag a source version
        with its twin, create `<name>-onnx` versions and aliases; it is no admin, so it cannot manage users,
        permissions or webhooks."""
        self.ensure_user(STAGE_USER, self.secrets()["MLFLOW_STAGE_PASSWORD"])
        client = self.auth_client()
        role = next((r for r in client.list_roles("default") if r.name == STAGE_ROLE), None)
        if role is None:
            role = client.create_role("default", STAGE_ROLE, "Keras -> ONNX stage: edits registered models")
            client.add_role_permission(role.id, "registered_model", "*", "EDIT")
        if STAGE_ROLE not in {r.name for r in client.list_user_roles(STAGE_USER)}:
            client.assign_role(STAGE_USER, role.id)

    @contextmanager
    def as_admin(self) -> Iterator[None]:
        """MLflow client calls inside act as the admin (webhooks need it); the environment is restored after."""
        saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN_USER, MLFLOW_TRACKING_PASSWORD=self.secrets()[
            "MLFLOW_ADMIN_PASSWORD"])
        try:
            yield
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)

    # Prefect ----------------------------------------------------------------------------------------------------
    def migrate_prefect(self) -> None:
        """Migrations once, before any replica starts (the replicas never migrate:
        PREFECT_API_DATABASE_MIGRATE_ON_START=false)."""
        log = self.state_dir / "logs" / "prefect-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as stream:
            result = subprocess.run([str(BIN / "prefect"), "server", "database", "upgrade", "-y"], stdout=stream,
                                    stderr=subprocess.STDOUT, env={**os.environ, **self.prefect_server_env()})
        if result.returncode:
            raise StackError(f"prefect server database upgrade failed; see {log}")

    def nginx_config(self, name: str) -> Path:
        return self.state_dir / ("nginx" if name == "prefect" else f"nginx-{name}") / "nginx.conf"

    def nginx_command(self) -> list[str]:
        """nginx in front of the API replicas; websockets (events) pass through; a dead replica is skipped."""
        replicas = "\n".join(f"    server 127.0.0.1:{self.port(f'prefect-api-{n}')} max_fails=1 fail_timeout=5s;"
                             for n in (1, 2))
        return self.nginx("prefect", f"""
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream prefect_api {{
{replicas}
  }}
  server {{
    listen 127.0.0.1:{self.prefect_port};
    client_max_body_size 64m;
    location / {{
      proxy_pass http://prefect_api;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_connect_timeout 2s;
      proxy_read_timeout 3600s;
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
    }}
  }}""")

    def mlflow_proxy_command(self) -> list[str]:
        """nginx in front of the MLflow server, as MLflow runs behind a reverse proxy in production (TLS ends there).
        It also keeps `--workers 2` fast: uvicorn's multi-worker listener leaves Nagle's algorithm on (uvicorn issue
        #3149), so every request on a kept-alive connection waited ~40 ms for the client's delayed ACK (measured:
        48 ms for GET /version, 5 ms through a fresh connection); nginx answers clients with TCP_NODELAY and talks to
        MLflow on fresh connections. Artifacts stream through unbuffered, any size."""
        return self.nginx("mlflow-proxy", f"""
  server {{
    listen 127.0.0.1:{self.mlflow_port};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {{
      proxy_pass http://127.0.0.1:{self.port('mlflow-server')};
      proxy_set_header Host $host;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}""")

    def nginx(self, name: str, servers: str) -> list[str]:
        """Write service `name`'s nginx.conf around `servers` (the http block's body); its command."""
        config = self.nginx_config(name)
        temp = config.parent / "tmp"
        for folder in (config.parent / "logs", temp):
            folder.mkdir(parents=True, exist_ok=True)
        config.write_text(f"""{'user root;' if os.geteuid() == 0 else ''}
worker_processes 1;
pid {config.parent / 'nginx.pid'};
error_log {config.parent / 'logs' / 'error.log'} warn;
events {{ worker_connections 1024; }}
http {{
  access_log {config.parent / 'logs' / 'access.log'};
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;{servers}
}}
""")
        return ["/usr/sbin/nginx", "-p", str(config.parent), "-c", str(config), "-g", "daemon off;"]

    # The whole stack --------------------------------------------------------------------------------------------
    def up(self) -> None:
        if missing := missing_programs():
            raise StackError(f"the production stack needs {', '.join(missing)}: run `apt-get install -y "
                             f"{' '.join(missing)}` (or .ci/run, which installs them)")
        self.init_postgres()
        self.start("postgres")
        self.ensure_databases()
        self.start("s3")
        self.start("redis")
        self.start("mlflow", timeout_seconds=300)  # the first start migrates two fresh databases
        self.start("mlflow-proxy")
        self.ensure_stage_user()
        with self.as_admin():
            self.register_webhook()
        if not self.running_pid("prefect-api-1"):
            self.migrate_prefect()
        for name in ("prefect-api-1", "prefect-api-2", "prefect-services", "prefect"):
            self.start(name)  # one after the other: replicas started at once race on their first writes
        self.deploy()
        for name in self.services[self.services.index("prefect") + 1:]:
            self.start(name)

    def summary(self) -> str:
        return f"""
MLflow     {self.mlflow_uri}   (basic-auth: admin and {STAGE_USER}; passwords in {self.state_dir / 'secrets.env'})
Artifacts  s3://{BUCKET}/mlflow-artifacts on SeaweedFS {self.s3_endpoint}, proxied by MLflow
Prefect UI {self.prefect_api.removesuffix('/api')}/deployments   (nginx, 2 replicas; {WORKERS} workers, pool onnx-stage)
Logs       {self.state_dir / 'logs'}
Use it:    export MLFLOW_TRACKING_URI={self.mlflow_uri} PREFECT_API_URL={self.prefect_api}
           export MLFLOW_TRACKING_USERNAME=<your MLflow user> MLFLOW_TRACKING_PASSWORD=<its password>"""

