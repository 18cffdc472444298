"""Everything that needs the source model's framework (TensorFlow/Keras, scikit-learn, ...) runs in one child
process per flow run.

TensorFlow costs ~800 MB that it never gives back, and a hung or exploding conversion ignores Prefect's
timeouts inside a thread; in a child process it can be killed. The parent talks to the child over a pipe:
one request, one answer, each bounded by a timeout. Requests run concurrently (one thread each in the child), except
those in ONE_AT_A_TIME, which run one after the other in the order they came: the parent
can send the reference prediction while the child converts, and the child predicts as soon as the conversion is done.
The child serves the operations of one module (load_model, convert, predict, time_predict, layer_outputs,
input_hints): the source kind's (onnx_stage/sources/), Keras' by default.
"""
from __future__ import annotations

import importlib
import itertools
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any, ClassVar

from onnx_stage.scratch import make_scratch, remove_scratch

KERAS_OPERATIONS = "onnx_stage.keras_ops"
COMMON_OPERATIONS = "onnx_stage.consumer"  # served for every source kind: source_answers (the source's own pyfunc)
# Run one after the other, in the order they came: both are Python-heavy, so side by side they share one GIL and the
# cores, and the conversion everything waits for took 2.4-2.6 s instead of 2.1 (MobileNetV2, Keras predicting batches
# 1 and 16 beside it); after it, the prediction overlaps the parent's graph-optimisation check instead. One at a time
# also keeps the prediction's activations off the conversion's memory peak, whatever the model's size.
ONE_AT_A_TIME = frozenset({"convert", "predict"})


class WorkerError(RuntimeError):
    """The child failed a request, died, or ran out of time. `signal_number`: the signal that killed the child
    during a convert request (a route that crashed it), else None."""

    def __init__(self, message: str, signal_number: int | None = None) -> None:
        super().__init__(message)
        self.signal_number = signal_number


class KerasWorker:
    """Parent-side handle of the child process. Use as a context manager.

    The child imports its operations module as soon as it starts, so Keras' TensorFlow import overlaps the
    parent's download of the model (most sources are Keras); serve() swaps in another kind's child."""

    # A child that dies after its model loaded is replaced (the model loaded again) at most this often per worker
    RESPAWNS = 3
    _prestarted: ClassVar["KerasWorker | None"] = None  # this process's child started ahead of its flow run

    @classmethod
    def prestart(cls, timeout_seconds: float) -> None:
        """Start a Keras child now for this process's next open(): a warm engine's ready process
        (flows/warm_engine.py) pays TensorFlow's ~3 s import before its flow run arrives."""
        cls._prestarted = cls(timeout_seconds)

    @classmethod
    def discard_prestarted(cls) -> None:
        """Stop the child prestart() started: the flow run this process took over has another environment."""
        if cls._prestarted is not None:
            cls._prestarted.close(wait=False)
            cls._prestarted = None

    @classmethod
    def open(cls, timeout_seconds: float) -> "KerasWorker":
        """The child prestart() started, with this timeout, if it is alive and was started in this process's current
        working directory (a deployment's pull step may change it: a custom layer module may live there); else a new
        one."""
        worker, cls._prestarted = cls._prestarted, None
        if worker is not None and worker._process.poll() is None and worker._started_in == os.getcwd():
            worker.timeout_seconds = timeout_seconds
            return worker
        if worker is not None:
            worker.close()
        return cls(timeout_seconds)

    def __init__(self, timeout_seconds: float, operations: str = KERAS_OPERATIONS) -> None:
        self.timeout_seconds = timeout_seconds
        self._closed = True
        self._generation, self._respawns_left = 0, self.RESPAWNS
        self._load_request: dict[str, Any] | None = None  # replayed into a replacement child
        self._last_death: tuple[str, int | None] = ("", None)  # why the last child died, and the signal
        self._respawning = threading.RLock()
        self._start_child(operations)

    def _start_child(self, operations: str) -> None:
        parent_end, child_end = Pipe()
        self._conn = parent_end
        # the child's own temporary directory, removed with it: TensorFlow's autograph leaves a .py file in TMPDIR
        # per traced function, and a killed conversion leaves its scratch files
        self._scratch = make_scratch("keras")
        self._log = open(self._scratch / "child.log", "wb")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "TMPDIR": str(self._scratch)}
        self._started_in = os.getcwd()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "onnx_stage.keras_worker", str(child_end.fileno()), operations],
            pass_fds=[child_end.fileno()], stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        child_end.close()
        self.operations, self._closed = operations, False
        self._request_ids, self._sending = itertools.count(), threading.Lock()
        self._waiting: dict[int, _Request] = {}
        self._reader = threading.Thread(target=_read_answers, args=(parent_end, self._waiting, self._sending),
                                        daemon=True)
        self._reader.start()

    def serve(self, operations: str) -> None:
        """Make the child serve `operations` (a source kind's module): a child serving another module is replaced,
        so a scikit-learn source never pays for the TensorFlow import a Keras child starts with."""
        if operations != self.operations:
            self.close()
            self._start_child(operations)

    def __enter__(self) -> "KerasWorker":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, operation: str, **kwargs: Any) -> Any:
        return self.start(operation, **kwargs).result()

    def start(self, operation: str, **kwargs: Any) -> "PendingCall":
        """Send a request without waiting for it, so the parent can work while the child computes."""
        if self._closed:
            raise WorkerError(f"cannot run {operation}: the child process was already stopped")
        if self._process.poll() is not None:
            raise WorkerError(f"the child process is gone ({self._exit_reason()}){self._log_tail()}")
        request = _Request(queued=operation in ONE_AT_A_TIME)
        with self._sending:
            request_id = next(self._request_ids)
            self._waiting[request_id] = request
            self._conn.send((request_id, operation, kwargs))
        return PendingCall(self, operation, request, kwargs, self._generation)

    def _receive(self, operation: str, request: "_Request", kwargs: dict[str, Any] | None = None,
                 generation: int = 0, retried: bool = False) -> Any:
        """The answer, waited for at most the worker's timeout from when the child started the request (a queued
        one waits for the one before it, whose own clock runs meanwhile)."""
        request.started.wait(self.timeout_seconds)  # queued: the request before it has at most that much left
        try:
            status, payload = request.answer.result(
                timeout=max(0.0, request.started_at + self.timeout_seconds - time.monotonic()))
        except FutureTimeout:
            self.close()
            raise WorkerError(
                f"{operation} (in the model's child process) took longer than {self.timeout_seconds:.0f} s and was killed; "
                "raise convert.timeout_seconds if the model is just big"
            ) from None
        if status == "gone":
            if self._closed:
                raise WorkerError(f"the child process was stopped during {operation}")
            return self._after_death(operation, kwargs or {}, generation, retried)
        if status == "error":
            raise WorkerError(payload)
        if operation == "load_model":
            self._load_request = kwargs
        return payload

    def _after_death(self, operation: str, kwargs: dict[str, Any], generation: int, retried: bool) -> Any:
        """The child died under a request. Once a model was loaded, the child is replaced (the model loaded again)
        so that one crash (a converter route that segfaults or aborts) costs that request, not the flow run: a
        convert request fails with the signal (tasks/convert.py goes on with the next route), any other request is
        sent again once to the new child (the reference predictions the child made while converting)."""
        with self._respawning:  # the first request to see the death replaces the child; the others find it done
            if generation == self._generation:
                self._process.wait(timeout=10)
                code = self._process.returncode
                self._last_death = (f"the child process died during {operation} ({self._exit_reason()})"
                                    f"{self._log_tail()}", -code if code is not None and code < 0 else None)
                if self._load_request is None or self._respawns_left <= 0 or self._closed:
                    raise WorkerError(self._last_death[0], self._last_death[1] if operation == "convert" else None)
                self._respawn()
        reason, signal_number = self._last_death
        if operation == "convert" or retried:
            raise WorkerError(reason, signal_number if operation == "convert" else None)
        pending = self.start(operation, **kwargs)
        return self._receive(operation, pending._request, kwargs, pending._generation, retried=True)

    def _respawn(self) -> None:
        """A new child in place of the dead one, with the last loaded model loaded again."""
        self._respawns_left -= 1
        self._reader.join(timeout=10)
        self._conn.close()
        self._remove_scratch()
        self._start_child(self.operations)
        self._generation += 1
        self.call("load_model", **self._load_request)

    def close(self, wait: bool = True) -> None:
        """Kill the child. `wait=False` returns at once and reaps it on a thread: the kernel takes ~0.2 s to free
        TensorFlow's memory, which the flow spends registering instead."""
        if self._closed:
            return
        self._closed = True
        if self._process.poll() is None:
            self._process.kill()
        if wait:
            self._reap()
        else:
            threading.Thread(target=self._reap, name="reap-keras-child").start()

    def _reap(self) -> None:
        self._process.wait()
        self._reader.join(timeout=10)  # the child's end closed with it: the reader sees EOF and fails what waits
        self._conn.close()
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        self._log.close()
        remove_scratch(self._scratch)

    def _exit_reason(self) -> str:
        code = self._process.returncode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return f"killed by {name}" + (", most likely out of memory" if name == "SIGKILL" else "")
        return f"exit code {code}"

    def _log_tail(self) -> str:
        self._log.flush()
        lines = Path(self._log.name).read_text(errors="replace").strip().splitlines()[-5:]
        return ("; last output: " + " | ".join(lines)) if lines else ""


class _Request:
    """A request sent to the child: its answer, and when the child started it (at once unless `queued`: a
    ONE_AT_A_TIME request starts when the child says so; `started` is also set once it is answered or the child is
    gone, so nothing waits for a start that will not come)."""

    def __init__(self, queued: bool) -> None:
        self.answer: Future = Future()
        self.started, self.started_at = threading.Event(), time.monotonic()
        if not queued:
            self.started.set()

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.started.set()


def _read_answers(conn: Connection, waiting: dict[int, _Request], lock: threading.Lock) -> None:
    """Hand each answer to the request it belongs to (and the child's "started" notice of a queued one); when the
    child is gone, "gone" to every request still waiting."""
    while True:
        try:
            request_id, status, payload = conn.recv()
        except (EOFError, OSError):
            break
        with lock:
            request = waiting.get(request_id) if status == "started" else waiting.pop(request_id, None)
        if request is not None and status == "started":
            request.start()
        elif request is not None:
            request.answer.set_result((status, payload))
            request.started.set()
    with lock:
        for request in waiting.values():
            request.answer.set_result(("gone", None))
            request.started.set()
        waiting.clear()


class PendingCall:
    """A request the child is working on; result() waits for its answer (bounded by the worker's timeout)."""

    def __init__(self, worker: KerasWorker, operation: str, request: _Request, kwargs: dict[str, Any],
                 generation: int) -> None:
        self._worker, self._operation, self._request = worker, operation, request
        self._kwargs, self._generation = kwargs, generation

    def result(self) -> Any:
        return self._worker._receive(self._operation, self._request, self._kwargs, self._generation)


def _serve(conn: Connection, operations_module: str) -> None:
    operations = importlib.import_module(operations_module)  # Keras': imports TensorFlow; the parent never does
    state: dict[str, Any] = {}
    sending = threading.Lock()
    in_order: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_answer_in_order, args=(in_order,), daemon=True).start()
    while True:
        try:
            request_id, operation, kwargs = conn.recv()
        except EOFError:
            return
        served = operations if hasattr(operations, operation) else importlib.import_module(COMMON_OPERATIONS)
        request = (conn, sending, served, state, request_id, operation, kwargs)
        if operation in ONE_AT_A_TIME:
            in_order.put(request)
        else:
            threading.Thread(target=_answer, args=request, daemon=True).start()


def _answer_in_order(requests: queue.SimpleQueue) -> None:
    """ONE_AT_A_TIME requests, one after the other in the order they came; the parent is told when each starts (its
    timeout counts from then)."""
    while True:
        conn, sending, operations, state, request_id, operation, kwargs = requests.get()
        with sending:
            conn.send((request_id, "started", None))
        _answer(conn, sending, operations, state, request_id, operation, kwargs)


def _answer(conn: Connection, sending: threading.Lock, operations: Any, state: dict[str, Any], request_id: int,
            operation: str, kwargs: dict[str, Any]) -> None:
    try:
        answer = ("ok", getattr(operations, operation)(state, **kwargs))
    except Exception as error:  # every failure goes back to the parent as one readable line
        detail = traceback.format_exc(limit=-3) if os.environ.get("ONNX_STAGE_DEBUG") else ""
        answer = ("error", f"{type(error).__name__}: {error}{detail}")
    with sending:
        try:
            conn.send((request_id, *answer))
        except (pickle.PicklingError, TypeError) as error:
            conn.send((request_id, "error", f"cannot send the result of {operation} back: {error}"))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])), sys.argv[2])
