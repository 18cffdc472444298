"""The Keras child process: answers, readable errors, and a hard timeout that kills it."""
import sys
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
