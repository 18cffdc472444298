"""Timing loops and latency statistics, shared by the flow process (onnxruntime) and the Keras child."""
from __future__ import annotations

import math
import time
from array import array
from collections.abc import Sequence
from typing import Callable

import numpy as np

from onnx_stage.records import LatencyStats


def time_calls(call: Callable[[], object], warmup_runs: int, min_runs: int, min_seconds: float) -> array:
    """Seconds per call: warm-up, then at least min_runs calls and at least min_seconds of timing.

    Kept as an array of doubles, not a list of Python floats: a fast model gives ~180,000 calls per contender, and a
    million float objects a run left a long-lived worker's heap fragmented (benchmarks/worker_memory.py)."""
    for _ in range(warmup_runs):
        call()
    durations = array("d")
    started = time.perf_counter()
    while len(durations) < min_runs or time.perf_counter() - started < min_seconds:
        before = time.perf_counter()
        call()
        durations.append(time.perf_counter() - before)
    return durations


def balanced_orders(count: int) -> list[list[int]]:
    """Orders of `count` contenders in which each one comes right after every other equally often (a Williams
    design: `count` orders, twice that for an odd count). A fixed order gives each contender the same predecessor
    every round, so whatever that predecessor leaves behind (threads still spinning, caches it evicted) would weigh
    on one contender only."""
    first = [0] + [(k + 1) // 2 if k % 2 else count - k // 2 for k in range(1, count)]
    orders = [[(position + shift) % count for position in first] for shift in range(count)]
    return orders + [order[::-1] for order in orders] if count % 2 and count > 1 else orders


def time_interleaved(calls: dict[str, Callable[[], object]], warmup_runs: int, min_runs: int, min_seconds: float,
                     rounds: int = 10) -> dict[str, array]:
    """time_calls for several contenders, alternating in rounds (balanced_orders, at least `rounds`, a whole number
    of the design) so that machine noise and the previous contender's after-effects hit them alike."""
    for call in calls.values():
        for _ in range(warmup_runs):
            call()
    names = list(calls)
    orders = balanced_orders(len(names))
    rounds = -(-rounds // len(orders)) * len(orders)
    durations = {name: array("d") for name in calls}
    for round_index in range(rounds):
        for index in orders[round_index % len(orders)]:
            durations[names[index]] += time_calls(calls[names[index]], 0, -(-min_runs // rounds), min_seconds / rounds)
    return durations


HISTOGRAM_BINS = 40


def latency_stats(runtime: str, batch_size: int, durations_s: Sequence[float]) -> LatencyStats:
    milliseconds = np.asarray(durations_s) * 1e3
    p50, p95, p99 = np.percentile(milliseconds, [50, 95, 99])
    mean = float(milliseconds.mean())
    half_width = 1.96 * float(milliseconds.std(ddof=1)) / math.sqrt(len(milliseconds)) if len(milliseconds) > 1 else 0.0
    return LatencyStats(runtime=runtime, batch_size=batch_size, runs=len(milliseconds), p50_ms=float(p50),
                        p95_ms=float(p95), p99_ms=float(p99), mean_ms=mean, mean_ci95_ms=half_width,
                        throughput_per_s=batch_size * 1e3 / mean, histogram_ms=histogram(milliseconds),
                        samples_ms=milliseconds.round(4))


def histogram(milliseconds: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, list[float]]:
    """Counts over log-spaced bins from the fastest to the slowest call: the distribution's shape in a few hundred
    bytes, where the raw samples of a fast model are tens of thousands of numbers (megabytes of JSON)."""
    low, high = float(milliseconds.min()), float(milliseconds.max())
    edges = np.geomspace(low, high, bins + 1) if 0 < low < high else np.array([low, high])
    counts, edges = np.histogram(milliseconds, bins=edges)
    return {"edges": edges.round(5).tolist(), "counts": counts.astype(float).tolist()}
