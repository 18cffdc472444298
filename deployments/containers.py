"""Containers on the production stack: a local dockerd, the worker image, a Prefect docker worker.

    python -m deployments.containers up     # after `make stack-up PROFILE=production`: dockerd, image, pool, worker
    python -m deployments.containers down   # stop the docker worker and dockerd (`make stack-down` does too)

No image registry is reachable here, so the image is built from this machine alone: Debian bookworm from
`debootstrap` (its python3.11 is the minor version the venv was locked for), the checkout's `.venv` copied in at the
same absolute path (`docker import`, no pip at build time), then deployments/docker/Dockerfile adds the code. The
debootstrap tree and the images live under .onnx-stage/docker and are reused: the venv image is rebuilt only
when uv.lock changes, the code layer in seconds. Containers use the host's network (`network_mode: host`), so
127.0.0.1 inside is the stack's.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deployments.deploy import DOCKER_POOL
from deployments.production import ProductionStack
from deployments.stack import PROJECT_ROOT, StackError, run_command

DOCKER_DEPLOYMENT = "convert-keras-to-onnx/convert-in-container"
BOOKWORM_MIRROR = "http://deb.debian.org/debian"
# Debian package → the program containers need (.ci/run installs them on a clean machine)
APT_PROGRAMS = {"docker.io": Path("/usr/sbin/dockerd"), "debootstrap": Path("/usr/sbin/debootstrap")}


def cache_dir() -> Path:
    """Kept across stacks and test sessions (whatever ONNX_STAGE_HOME says): the debootstrap tree and dockerd's
    image store, in the checkout's .onnx-stage."""
    return PROJECT_ROOT / ".onnx-stage" / "docker"


def lock_hash() -> str:
    return hashlib.sha256((PROJECT_ROOT / "uv.lock").read_bytes()).hexdigest()[:12]


def docker_host() -> str:
    return f"unix://{cache_dir() / 'docker.sock'}"


def docker(*arguments: str, stdin=None, timeout: float = 900) -> str:
    """Run the docker client against the stage's dockerd; a failure names the command and docker's last words."""
    env = {**os.environ, "DOCKER_HOST": docker_host(), "DOCKER_BUILDKIT": "0"}
    result = subprocess.run([shutil.which("docker") or "docker", *arguments], stdin=stdin, capture_output=True,
                            text=stdin is None, env=env, timeout=timeout, cwd=PROJECT_ROOT)
    if result.returncode:
        error = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
        raise StackError(f"docker {' '.join(arguments[:2])} failed: {error.strip()[-400:]}")
    return result.stdout if isinstance(result.stdout, str) else result.stdout.decode()


def dockerd_command() -> list[str]:
    """dockerd on its own socket and data root; no bridge or iptables (containers use the host's network). Its
    exec root sits in a short path: containerd's socket paths must fit in 108 bytes."""
    root = cache_dir()
    exec_root = Path("/tmp") / f"onnx-stage-docker-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
    return ["/usr/sbin/dockerd", "-H", docker_host(), "--data-root", str(root / "data"), "--exec-root",
            str(exec_root), "--pidfile", str(root / "dockerd.pid"), "--bridge=none", "--iptables=false",
            "--ip6tables=false", "--ip-masq=false"]


def docker_ready() -> bool:
    try:
        docker("version", timeout=10)
        return True
    except (StackError, subprocess.TimeoutExpired):
        return False


def ensure_rootfs() -> Path:
    """Debian bookworm (minbase + python3.11) made once by debootstrap, ~100 s; reused after."""
    rootfs = cache_dir() / "rootfs-bookworm"
    if (rootfs / "usr" / "bin" / "python3.11").exists():
        return rootfs
    partial = rootfs.with_name(rootfs.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["/usr/sbin/debootstrap", "--variant=minbase", "--include=python3.11,ca-certificates",
                             "bookworm", str(partial), BOOKWORM_MIRROR], capture_output=True, text=True)
    if result.returncode:
        raise StackError(f"debootstrap bookworm failed: {result.stderr.strip()[-400:]}; check that {BOOKWORM_MIRROR} "
                         "is reachable (apt-get update)")
    partial.rename(rootfs)
    return rootfs


def image_exists(tag: str) -> bool:
    return bool(docker("images", "-q", tag).strip())


def build_worker_image() -> str:
    """The worker image's tag, built as needed: the venv image once per uv.lock, then the code layer."""
    base = f"onnx-stage-venv:{lock_hash()}"
    if not image_exists(base):
        rootfs = ensure_rootfs()
        venv = PROJECT_ROOT / ".venv"
        # one tar stream: the debootstrap tree at /, the venv at its own absolute path
        tar = subprocess.Popen(["tar", "-c", "-C", str(rootfs), ".", "-C", "/", str(venv.relative_to("/"))],
                               stdout=subprocess.PIPE)
        try:
            docker("import", "-", base, stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar.wait()
    tag = f"onnx-stage-worker:{lock_hash()}"
    docker("build", "--network", "host", "-f", "deployments/docker/Dockerfile", "--build-arg", f"BASE={base}",
           "--build-arg", f"PROJECT_ROOT={PROJECT_ROOT}", "-t", tag, ".")
    return tag


class ContainerStack(ProductionStack):
    """The production stack plus dockerd and a docker worker on pool onnx-stage-docker."""

    def service(self, name: str):
        if name == "dockerd":
            return dockerd_command(), {}, docker_ready
        if name == "docker-worker":
            command = [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", DOCKER_POOL,
                       "--type", "docker", "--name", "onnx-stage-docker-worker", "--with-healthcheck"]
            port = self.port("worker-1") + 100
            env = {**self.client_env(), "DOCKER_HOST": docker_host(), "PREFECT_WORKER_QUERY_SECONDS": "2",
                   "PREFECT_HOME": str(self.state_dir / "prefect-docker-worker"),
                   "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "PREFECT_WORKER_WEBSERVER_PORT": str(port)}
            return command, env, f"http://127.0.0.1:{port}/health"
        return super().service(name)

    def runs_service(self, name: str, cmdline: list[bytes]) -> bool:
        if name == "dockerd":
            return b"dockerd" in b" ".join(cmdline) and docker_host().encode() in b" ".join(cmdline)
        return super().runs_service(name, cmdline)

    def prepare_containers(self) -> str:
        """Start dockerd and build the worker image (minutes the first time: callers may run this in the
        background while the rest of the stack starts); returns the image tag."""
        if missing := [package for package, program in APT_PROGRAMS.items() if not program.exists()]:
            raise StackError(f"containers need {', '.join(missing)}: run `apt-get install -y {' '.join(missing)}` "
                             "(or .ci/run, which installs them)")
        self.start("dockerd", timeout_seconds=60)
        started = time.monotonic()
        image = build_worker_image()
        print(f"image {image}: ready in {time.monotonic() - started:.1f} s", flush=True)
        return image

    def up_containers(self, image: str | None = None) -> str:
        """dockerd and the image (unless `image` is already built), the docker pool and its deployment, the docker
        worker; returns the image tag."""
        image = image or self.prepare_containers()
        subprocess.run([sys.executable, "-m", "deployments.deploy", "--containers", image,
                        str(self.mlflow_credentials_file())], cwd=PROJECT_ROOT, check=True,
                       env={**os.environ, **self.client_env()})
        self.start("docker-worker")
        return image

    def down_containers(self) -> None:
        for name in ("docker-worker", "dockerd"):
            self.stop(name)

    def down(self) -> None:
        """Everything, containers first (`make stack-down`)."""
        self.down_containers()
        super().down()


def main(argv: list[str] | None = None) -> int:
    command = (argv if argv is not None else sys.argv[1:])[:1]
    if command not in (["up"], ["down"]):
        print("usage: python -m deployments.containers up|down", file=sys.stderr)
        return 2
    base = ProductionStack.from_env()
    stack = ContainerStack.at(base.state_dir, base.base_port)

    def up() -> str:
        return f"docker worker on pool {DOCKER_POOL} runs {stack.up_containers()}"

    def down() -> str:
        stack.down_containers()
        return "docker worker and dockerd stopped"

    return run_command("containers", up if command == ["up"] else down)


if __name__ == "__main__":
    sys.exit(main())
