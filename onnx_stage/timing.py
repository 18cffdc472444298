"""Latency statistics from per-call durations."""
from __future__ import annotations

import numpy as np

from tasks.records import LatencyStats


def latency_stats(runtime: str, batch_size: int, durations_s: list[float]) -> LatencyStats:
    milliseconds = np.asarray(durations_s) * 1e3
    p50, p95, p99 = np.percentile(milliseconds, [50, 95, 99])
    return LatencyStats(runtime=runtime, batch_size=batch_size, p50_ms=float(p50), p95_ms=float(p95),
                        p99_ms=float(p99), throughput_per_s=float(batch_size * 1e3 / milliseconds.mean()))
