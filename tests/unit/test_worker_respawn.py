"""A child that dies under a request after its model loaded is replaced, with the model loaded again: the request
that killed it fails with the signal, the others are answered by the new child."""
import signal
from pathlib import Path
from typing import Iterator

import pytest

from onnx_stage.keras_worker import KerasWorker, WorkerError

OPERATIONS = '''
import signal, time

def load_model(state, value):
    state["model"] = value
    return value

def nap(state, seconds):
    time.sleep(seconds)
    return state["model"]

def convert(state):
    signal.raise_signal(signal.SIGSEGV)  # on this thread, as a segfault in a converter is
'''


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KerasWorker]:
    (tmp_path / "crashing_ops.py").write_text(OPERATIONS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with KerasWorker(timeout_seconds=60, operations="crashing_ops") as started:
        yield started


def test_a_crash_fails_its_request_with_the_signal_and_the_others_reach_a_new_child(worker: KerasWorker) -> None:
    worker.call("load_model", value=7)
    first_child = worker._process.pid
    napping = worker.start("nap", seconds=2.0)  # in flight when the child dies
    with pytest.raises(WorkerError, match="died during convert \\(killed by SIGSEGV\\)") as crash:
        worker.call("convert")
    assert crash.value.signal_number == signal.SIGSEGV
    assert napping.result() == 7  # sent again to the new child, which loaded the model again
    assert worker._process.pid != first_child and worker.call("nap", seconds=0) == 7


def test_without_a_loaded_model_a_death_is_final(worker: KerasWorker) -> None:
    with pytest.raises(WorkerError, match="died during convert"):
        worker.call("convert")
    with pytest.raises(WorkerError, match="gone"):
        worker.call("nap", seconds=0)
