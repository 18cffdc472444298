"""The flow-run command of the stage's process-pool deployments (deployments/prefect.yaml):

    python -m onnx_stage.flows.engine_client [FLOW_RUN_ID]

hands the flow run to the worker's warm engine (flows/warm_engine.py, found through $ONNX_STAGE_ENGINE_SOCKET) and
waits for it, passing on SIGTERM/SIGINT/SIGHUP and ending with the run's exit status; where there is no engine, or
it has no ready process, it becomes `python -m prefect.engine` itself (exec), exactly what a process worker runs.

Standard library only: this process starts for every flow run, and its whole point is to start fast.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

ENGINE_SOCKET_ENV = "ONNX_STAGE_ENGINE_SOCKET"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_LENGTH = struct.Struct("!Q")
STANDARD_STREAMS = (0, 1, 2)


def send_request(connection: socket.socket, request: dict, fds: tuple[int, ...] = STANDARD_STREAMS) -> None:
    """One request: its length (8 bytes) with the file descriptors attached, then the JSON."""
    payload = json.dumps(request).encode()
    socket.send_fds(connection, [_LENGTH.pack(len(payload))], list(fds))
    connection.sendall(payload)


def receive_request(connection: socket.socket) -> tuple[dict, list[int]]:
    """The request send_request() sent, and the received file descriptors (the caller closes them).
    Raises EOFError when the other end closed first, ValueError on a malformed request."""
    header, fds, _, _ = socket.recv_fds(connection, _LENGTH.size, len(STANDARD_STREAMS))
    if not header:
        raise EOFError("closed before a request")
    if len(header) != _LENGTH.size or len(fds) != len(STANDARD_STREAMS):
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request header")
    (length,) = _LENGTH.unpack(header)
    payload = bytearray()
    while len(payload) < length:
        chunk = connection.recv(min(1 << 16, length - len(payload)))
        if not chunk:
            raise EOFError("closed in the middle of a request")
        payload += chunk
    return json.loads(payload), fds


def read_line(connection: socket.socket) -> str:
    """One line, read unbuffered (the engine's answers are short and far apart); "" when the other end closed."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = connection.recv(1)
        if not byte:
            return ""
        line += byte
    return line.decode()


def hand_over(path: str) -> socket.socket | None:
    """Send this flow run to the engine at `path`; the connection if it took the run, None if there is no engine or
    it declined (no ready process)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        send_request(connection, {"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[1:]})
        answer = read_line(connection)
    except OSError:
        connection.close()
        return None
    if not answer.startswith("accepted"):
        connection.close()
        return None
    return connection


def wait_for_run(connection: socket.socket) -> int:
    """Forward this process's signals to the run until the engine reports its wait status; the exit code."""
    def forward(signal_number: int, _frame: object) -> None:
        connection.sendall(f"signal {signal_number}\n".encode())

    for signal_number in FORWARDED_SIGNALS:
        signal.signal(signal_number, forward)
    while line := read_line(connection):
        if line.startswith("exit "):
            return os.waitstatus_to_exitcode(int(line.split()[1]))
    print("onnx-stage engine client: the warm engine went away during the flow run; see the worker's log",
          file=sys.stderr)
    return 1


def main() -> None:
    path = os.environ.get(ENGINE_SOCKET_ENV)
    connection = hand_over(path) if path else None
    if connection is None:
        os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *sys.argv[1:]])
    code = wait_for_run(connection)
    if code < 0:  # the run was killed by a signal: end the same way, so the worker reports what it would have
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
