"""The Keras child process: answers, readable errors, and a hard timeout that kills it."""
import sys
import time
from pathlib import Path

import pytest

from onnx_stage.keras_worker import KerasWorker, WorkerError


def test_errors_come_back_as_one_line_and_the_worker_survives(tmp_path: Path) -> None:
    with KerasWorker(timeout_seconds=300) as worker:
        with pytest.raises(WorkerError, match="FileNotFoundError|No such file"):
            worker.call("load_model", model_file=str(tmp_path / "missing.h5"))
        with pytest.raises(WorkerError, match="AttributeError"):
            worker.call("no_such_operation")


def test_a_call_over_its_timeout_kills_the_child() -> None:
    worker = KerasWorker(timeout_seconds=0.5)  # importing TensorFlow alone takes longer
    with pytest.raises(WorkerError, match="took longer than 0 s and was killed; raise convert.timeout_seconds"):
        worker.call("load_model", model_file="/dev/null")
    assert worker._process.poll() is not None
    with pytest.raises(WorkerError, match="already stopped"):
        worker.call("load_model", model_file="/dev/null")


def test_a_started_call_lets_the_parent_work_until_it_asks_for_the_answer(tmp_path: Path) -> None:
    with KerasWorker(timeout_seconds=300) as worker:
        pending = worker.start("no_such_operation")
        assert worker._process.poll() is None  # the parent got control back while the child works
        with pytest.raises(WorkerError, match="AttributeError"):
            pending.result()
        with pytest.raises(WorkerError, match="FileNotFoundError|No such file"):
            worker.call("load_model", model_file=str(tmp_path / "missing.h5"))


OPERATIONS = '''
import os, time

def nap(state, seconds):
    time.sleep(seconds)
    return seconds

def die(state):
    os._exit(3)

def convert(state, seconds):
    state.setdefault("finished", []).append(("convert", time.sleep(seconds) or time.monotonic()))
    return seconds

def predict(state, seconds=0.0):
    state.setdefault("finished", []).append(("predict", time.sleep(seconds) or time.monotonic()))
    return [name for name, _ in state["finished"]]
'''


@pytest.fixture
def napping_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "napping_ops.py").write_text(OPERATIONS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with KerasWorker(timeout_seconds=60, operations="napping_ops") as worker:
        yield worker


def test_requests_run_concurrently_and_each_answer_reaches_its_caller(napping_worker: KerasWorker) -> None:
    slow = napping_worker.start("nap", seconds=3.0)
    started = time.perf_counter()
    assert napping_worker.call("nap", seconds=0.0) == 0.0  # answered while the slow request still sleeps
    assert time.perf_counter() - started < 2.5
    assert not slow._request.answer.done()
    assert slow.result() == 3.0


def test_convert_and_predict_run_one_after_the_other_in_the_order_they_came(napping_worker: KerasWorker) -> None:
    converting = napping_worker.start("convert", seconds=1.5)
    predicting = napping_worker.start("predict")
    started = time.perf_counter()
    assert napping_worker.call("nap", seconds=0.0) == 0.0  # other requests still run beside them
    assert time.perf_counter() - started < 1.0
    assert predicting.result() == ["convert", "predict"]  # the prediction waited for the conversion
    assert converting.result() == 1.5


def test_a_queued_request_is_timed_from_when_the_child_starts_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "napping_ops.py").write_text(OPERATIONS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with KerasWorker(timeout_seconds=2.0, operations="napping_ops") as worker:
        converting = worker.start("convert", seconds=1.5)
        predicting = worker.start("predict", seconds=1.0)  # 2.5 s after it was sent, 1.0 s after it started
        assert predicting.result() == ["convert", "predict"]
        assert converting.result() == 1.5


def test_a_child_that_dies_fails_every_waiting_request(napping_worker: KerasWorker) -> None:
    slow = napping_worker.start("nap", seconds=30.0)
    with pytest.raises(WorkerError, match="died during die .exit code 3"):
        napping_worker.call("die")
    with pytest.raises(WorkerError, match="died during nap"):
        slow.result()


def test_closing_the_worker_fails_a_waiting_request_with_a_clear_reason(napping_worker: KerasWorker) -> None:
    slow = napping_worker.start("nap", seconds=30.0)
    napping_worker.close()
    with pytest.raises(WorkerError, match="stopped during nap"):
        slow.result()


def test_closing_without_waiting_returns_at_once_and_reaps_the_child_on_a_thread(napping_worker: KerasWorker) -> None:
    slow = napping_worker.start("nap", seconds=30.0)
    log = Path(napping_worker._log.name)
    napping_worker.close(wait=False)
    assert napping_worker._process.returncode is None or napping_worker._process.returncode < 0  # killed, not waited
    with pytest.raises(WorkerError, match="stopped during nap"):
        slow.result()  # answered once the reaper thread sees the child's end close
    deadline = time.monotonic() + 10
    while log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert napping_worker._process.poll() == -9 and not log.exists()
    napping_worker.close()  # a second close (the context manager's) is a no-op
