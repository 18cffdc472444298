"""bounded_heap: a long-lived process's previous run's cyclic garbage goes before the next run; a first run pays
nothing; the objects alive before a run are left out of its full collections."""
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


def test_objects_alive_before_the_block_are_left_out_of_its_collections_and_handed_back_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_blocks_entered", 0)
    imported = Node()
    with memory.bounded_heap():
        made_in_the_run = Node()
        collected = {id(o) for o in gc.get_objects()}  # the generations a collection walks (not the frozen ones)
        assert id(imported) not in collected and id(made_in_the_run) in collected
    assert gc.get_freeze_count() == 0
    assert id(imported) in {id(o) for o in gc.get_objects()}
