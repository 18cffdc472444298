"""The flow process's C heap in a long-lived worker (one process running conversion after conversion).

glibc's malloc gives threads their own arenas, up to 8 per core, and keeps what is freed in them for reuse; and each
time a block it had mapped on its own (above 128 KiB) is freed, it raises that threshold (up to 32 MiB), so later
large blocks (arrays, protobufs, HTTP bodies) come from the arenas and stay there. Every flow run starts new threads
(Prefect's task runner, onnxruntime's pools, the HTTP clients), so a long-lived process spreads its allocations over
more and more arenas and its resident memory climbs run after run. Two arenas, a fixed 128 KiB mmap threshold and
returning freed pages to the OS after each run (benchmarks/worker_memory.py, digits MLP, benchmark at 20 timed runs /
0.1 s: after run 5 / after run 1 1.20 without, 1.04 with; at the default benchmark settings 521-546 MiB from run 4 to
11 without, 423-482 MiB with, still climbing: see benchmarks/README.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from contextlib import contextmanager

M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD_BYTES = 128 << 10  # glibc's initial value; setting it stops the raising
_blocks_entered = 0  # bounded_heap blocks this process entered


def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has mallopt and malloc_trim); None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextmanager
def bounded_heap(arenas: int = 2) -> Iterator[None]:
    """For the block, threads created get at most `arenas` malloc arenas between them and blocks above 128 KiB are
    mapped on their own (what MALLOC_ARENA_MAX and MALLOC_MMAP_THRESHOLD_ do at process start; both stay for the
    process); after it, the heap's free pages go back to the OS (malloc_trim). Off glibc, only the collection below.

    A run's objects that refer to each other (matplotlib's artists, caught exceptions' tracebacks and the frames and
    locals they hold) are freed only by the cyclic garbage collector, whose full collections come rarely: in a
    process that runs flow after flow they held ~12 MiB more per run (benchmarks/worker_memory.py: 1.18 after 6
    runs, 1.04 with a collection between runs). So every block after this process's first starts with a full
    collection (~0.3 s with the stage's imports): the previous run's garbage goes before the next run allocates,
    and a process that runs one flow, as Prefect's process workers do, pays nothing.

    The objects alive when the block starts (the imported frameworks: ~290k objects with MLflow, Prefect, onnx and
    pandas) are frozen out of the collector for the block (gc.freeze) and handed back after it (gc.unfreeze): each
    full collection inside a run otherwise walks them all, 0.14 s a time, and a run makes several (MobileNetV2's
    consumer check builds ~50k lists for its 224×224 request forms and MLflow's parsed input example, each set
    triggering one; benchmarks/stage_overhead.py, probes of gc.callbacks)."""
    global _blocks_entered
    libc = _libc()
    if _blocks_entered:
        gc.collect()
        if libc:
            libc.malloc_trim(0)
    _blocks_entered += 1
    if libc:
        libc.mallopt(M_ARENA_MAX, arenas)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if libc:
            libc.malloc_trim(0)
