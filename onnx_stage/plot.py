"""A PNG of the latency distributions per runtime and batch size."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from onnx_stage.records import BenchReport


def latency_plot(bench: BenchReport, path: Path, title: str) -> Path:
    """Box plots of the latency samples per runtime, one panel per batch size, written to `path` (PNG).

    A bare Figure, not pyplot: no process-wide figure registry (or GUI backend choice) in a long-lived worker. Its
    artists refer to each other, so only the cyclic garbage collector would free them, rarely (~3 MB a run, measured
    by benchmarks/worker_memory.py --tracemalloc): the figure is cleared once saved."""
    batch_sizes = sorted({row.batch_size for row in bench.rows})
    figure = Figure(figsize=(4.5 * len(batch_sizes), 4))
    axes = figure.subplots(1, len(batch_sizes), squeeze=False)
    for axis, batch_size in zip(axes[0], batch_sizes):
        rows = [row for row in bench.rows if row.batch_size == batch_size]
        axis.boxplot([row.samples_ms for row in rows], showfliers=True, whis=(1, 99))
        axis.set_xticks(range(1, len(rows) + 1), [row.runtime.replace(" ", "\n") for row in rows])
        axis.set_yscale("log")
        axis.set_title(f"batch {batch_size}")
        axis.set_ylabel("latency per call (ms, log scale)")
        axis.grid(axis="y", which="both", alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    figure.clear()
    return path
