"""Warm engine: a Prefect process worker whose flow runs start in a process that has already imported Prefect, MLflow
and the stage, and that holds a Keras child which has already imported TensorFlow.

A process worker starts each flow run as a new `python -m prefect.engine`: ~3 s of imports (Prefect 1.1 s, the stage
with MLflow and onnxruntime 2.0 s, measured here), then the flow's Keras child imports TensorFlow (~3 s) — longer than
the whole conversion of a small model. The warm engine pays for that before the run arrives:

    python -m onnx_stage.flows.warm_engine --socket PATH -- prefect worker start --pool onnx-stage ...

runs the worker command as its child, with ONNX_STAGE_ENGINE_SOCKET=PATH in its environment, and keeps one *ready
process*: a Python process that has imported what a flow run imports and started a Keras child (KerasWorker.prestart),
waiting. The deployments' flow-run command (flows/engine_client.py) hands its flow run — environment, working
directory, standard streams — to the ready process, which runs Prefect's own engine entry point (`prefect.engine` as
__main__) on it, and the client gets back the exit status. Prefect still schedules, limits, retries and cancels every
run; the engine only has the process a run starts in ready sooner, and never runs two flow runs in one process. Ready
processes are started fresh, not forked from a preloaded engine: onnxruntime starts native threads at import, and a
forked copy of them aborts at exit (measured: SIGABRT, std::system_error).

A new ready process is started only while no flow run is running, so its TensorFlow import never competes with a
conversion for the CPU; a run that finds none ready starts cold, as without the engine. The engine ends with its
worker command and passes on its exit status; SIGTERM/SIGINT stop the worker, the ready process and any run left.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path

from onnx_stage.flows.engine_client import ENGINE_SOCKET_ENV, receive_request, send_request
from onnx_stage.keras_worker import KerasWorker

logger = logging.getLogger("onnx_stage.warm_engine")

PRELOADED = ("prefect.engine", "prefect.flow_engine", "onnx_stage.flows.convert_flow", "onnx_stage.flows.sweep_flow")
# The ready process's Keras child is started before any config is known; open() sets the run's own timeout
PRESTART_TIMEOUT_SECONDS = 600
POLL_SECONDS = 0.2  # how often finished processes are collected (and a run's exit reported, at the latest)


class WarmEngine:
    """The engine process: a Unix socket for flow-run clients, the worker command, one ready process, the runs."""

    def __init__(self, socket_path: Path, keras_child: bool = True) -> None:
        self.socket_path, self.keras_child = socket_path, keras_child
        self._selector = selectors.DefaultSelector()
        self._ready: tuple[int, socket.socket] | None = None  # pid, the channel its flow run is handed over on
        self._runs: dict[int, socket.socket] = {}  # pid -> the client waiting for its exit status

    def serve(self, worker_command: list[str]) -> int:
        """Run until the worker command ends (its exit code) or a SIGTERM/SIGINT (143/130)."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        self.socket_path.chmod(0o600)  # whoever may connect may run flow code as this user
        listener.listen(16)
        self._selector.register(listener, selectors.EVENT_READ)
        worker = subprocess.Popen(worker_command, env={**os.environ, ENGINE_SOCKET_ENV: str(self.socket_path)})
        stopped_by: list[int] = []
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signal_number, lambda number, _frame: stopped_by.append(number))
        logger.info("warm engine on %s; worker pid %d", self.socket_path, worker.pid)
        try:
            while not stopped_by:
                if self._ready is None and not self._runs:
                    self._start_ready()
                for key, _ in self._selector.select(timeout=POLL_SECONDS):
                    if key.fileobj is listener:
                        self._take_run(listener)
                    else:
                        self._read_client(key.data)
                if (worker_status := self._collect_finished(worker.pid)) is not None:
                    worker.returncode = os.waitstatus_to_exitcode(worker_status)  # reaped here, not by Popen
                    return worker.returncode
            return 128 + stopped_by[0]
        finally:
            self._shut_down(worker, listener)

    def _start_ready(self) -> None:
        engine_end, ready_end = socket.socketpair()
        command = [sys.executable, "-m", "onnx_stage.flows.warm_engine", "--ready", str(ready_end.fileno())]
        if not self.keras_child:
            command.append("--no-keras-child")
        ready = subprocess.Popen(command, pass_fds=[ready_end.fileno()], start_new_session=True)  # killed as a group
        ready_end.close()
        self._ready = (ready.pid, engine_end)

    def _take_run(self, listener: socket.socket) -> None:
        """A client's flow run goes to the ready process, or the client is told to start it cold."""
        client, _ = listener.accept()
        client.settimeout(10)
        try:
            request, fds = receive_request(client)
        except (OSError, EOFError, ValueError) as error:
            logger.warning("dropped a client: %s", error)
            client.close()
            return
        try:
            if self._ready is None:
                client.sendall(b"declined no ready process\n")
                client.close()
                return
            pid, channel = self._ready
            self._ready = None
            try:
                send_request(channel, request, tuple(fds))
            except OSError as error:
                client.sendall(f"declined ready process {pid} is gone: {error}\n".encode())
                client.close()
                _kill_group(pid, signal.SIGKILL)
                return
            finally:
                channel.close()
            client.sendall(f"accepted {pid}\n".encode())
            client.settimeout(None)
            self._runs[pid] = client
            self._selector.register(client, selectors.EVENT_READ, pid)
            logger.info("flow run %s handed to ready process %d", request["env"].get("PREFECT__FLOW_RUN_ID"), pid)
        finally:
            for fd in fds:
                os.close(fd)

    def _read_client(self, pid: int) -> None:
        """A signal the client forwards goes to its run; a client that went away takes its run with it."""
        client = self._runs[pid]
        data = client.recv(4096)
        if not data:
            self._selector.unregister(client)
            _kill_group(pid, signal.SIGKILL)
            return
        for line in data.decode().splitlines():
            if line.startswith("signal "):
                _signal(pid, int(line.split()[1]))

    def _collect_finished(self, worker_pid: int) -> int | None:
        """Reap every finished child: report runs' statuses to their clients; the worker's wait status if it ended."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            if pid == worker_pid:
                return status
            if self._ready is not None and pid == self._ready[0]:
                logger.warning("ready process %d ended before a run (%s)", pid, status)
                self._ready[1].close()
                self._ready = None
            elif (client := self._runs.pop(pid, None)) is not None:
                try:
                    client.sendall(f"exit {status}\n".encode())
                except OSError:
                    pass  # the client is gone; its run was killed with it
                if client in self._selector.get_map():  # not when its end closed first (_read_client)
                    self._selector.unregister(client)
                client.close()

    def _shut_down(self, worker: subprocess.Popen, listener: socket.socket) -> None:
        for pid in [*self._runs, *([self._ready[0]] if self._ready else [])]:
            _kill_group(pid, signal.SIGKILL)
        if worker.returncode is None:
            _signal(worker.pid, signal.SIGTERM)
        listener.close()
        self.socket_path.unlink(missing_ok=True)


def run_ready_process(channel: socket.socket, keras_child: bool) -> int:
    """The ready process: import, start a Keras child, wait for a flow run, then run Prefect's engine on it exactly as
    `python -m prefect.engine` would (its SystemExit ends this process). 0 when the engine closed first."""
    if keras_child:
        KerasWorker.prestart(PRESTART_TIMEOUT_SECONDS)  # TensorFlow's import overlaps the imports below
    for module in PRELOADED:
        importlib.import_module(module)
    try:
        request, fds = receive_request(channel)
    except (OSError, EOFError, ValueError):
        return 0
    channel.close()
    for stream, fd in zip((0, 1, 2), fds):
        os.dup2(fd, stream)
        os.close(fd)
    if run_specific(os.environ) != run_specific(request["env"]):
        KerasWorker.discard_prestarted()  # started in the engine's environment: the run's own child starts instead
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    import prefect.engine
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    import onnx_stage

    onnx_stage.apply_environment_defaults()
    refresh_global_settings_context()  # Prefect's settings come from the run's environment, not the engine's
    setup_logging()
    sys.argv = [prefect.engine.__file__, *request["argv"]]
    runpy.run_path(prefect.engine.__file__, run_name="__main__")
    return 0


def run_specific(environment: dict[str, str]) -> dict[str, str]:
    """The variables a Keras child would inherit that may differ between the engine and a flow run: all but Prefect's
    own (they differ per run, and the child never reads them) and the engine's socket."""
    return {key: value for key, value in environment.items()
            if not key.startswith("PREFECT_") and key != ENGINE_SOCKET_ENV}


def _kill_group(pid: int, signal_number: int) -> None:
    try:
        os.killpg(pid, signal_number)
    except ProcessLookupError:
        pass


def _signal(pid: int, signal_number: int) -> None:
    try:
        os.kill(pid, signal_number)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, help="the Unix socket flow-run clients connect to")
    parser.add_argument("--no-keras-child", action="store_true", help="ready processes start no Keras child")
    parser.add_argument("--ready", type=int, metavar="FD", help=argparse.SUPPRESS)  # the engine starts its ready processes so
    parser.add_argument("worker_command", nargs=argparse.REMAINDER, help="-- then the worker command")
    args = parser.parse_args(argv)
    if args.ready is not None:
        sys.exit(run_ready_process(socket.socket(fileno=args.ready), keras_child=not args.no_keras_child))
    command = args.worker_command[1:] if args.worker_command[:1] == ["--"] else args.worker_command
    if args.socket is None:
        parser.error("give --socket PATH, the Unix socket the deployments' flow-run command connects to")
    if not command:
        parser.error("give the worker command after --, e.g. -- prefect worker start --pool onnx-stage")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sys.exit(WarmEngine(args.socket, keras_child=not args.no_keras_child).serve(command))


if __name__ == "__main__":
    main()
