"""bounded_heap: a long-lived process's previous run's cyclic garbage goes before the next run; a first run pays nothing."""
from __future__ import annotations

import gc
import weakref

import pytest

from onnx_stage import memory


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_the_previous_runs_cycles_are_collected_when_the_next_run_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_blocks_entered", 0)
    gc.disable()
    try:
        with memory.bounded_heap():
            garbage = weakref.ref(Node())
        assert garbage() is not None  # the first run of a process does not collect (a process worker's only run)
        with memory.bounded_heap():
            assert garbage() is None
    finally:
        gc.enable()
