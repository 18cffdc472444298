"""What a registered onnxruntime thread count costs a registry consumer on an idle machine.

Run from the repo root:  .venv/bin/python benchmarks/registered_threads.py [--models a,b] [--seconds 2]

The stage's benchmark runs on the machine converting the model, often a busy worker. Where one thread won there
(`intra_op_num_threads: 1` in the model's onnx_session_options), every consumer is held to one thread, whatever
its cores. Per model (converted by the stage's own routes) and batch size this prints the consumer's p50 latency
with the registered single thread over its p50 with onnxruntime's default (all cores): above 1 is what the
registered option costs. That is why, by default, the stage registers only core-count-free options
(`benchmark.tune_thread_counts: false`). On a 2-core machine the cost is bounded by about 2x.
"""
from __future__ import annotations

import os
from pathlib import Path

from bench_common import (geomean, load_and_convert, machine_line, make_inputs, ort_timer, parse_args,
                          ratio_with_spread, run_models, time_rounds)
from onnx_stage.keras_worker import KerasWorker

MODELS = ["dense", "conv2d", "MobileNetV2_224"]
BATCHES = [1, 32]
ONE_THREAD = {"intra_op_num_threads": 1}


def benchmark_model(worker: KerasWorker, name: str, model_file: Path, work_dir: Path, seconds: float) -> dict:
    source, onnx_model = load_and_convert(worker, name, model_file, work_dir)
    ratios = {}
    for batch_size in BATCHES:
        inputs = make_inputs(source, worker, batch_size)
        rounds = time_rounds({"one thread": ort_timer(onnx_model.onnx_path, ONE_THREAD, inputs),
                              "default": ort_timer(onnx_model.onnx_path, {}, inputs)}, seconds)
        ratios[batch_size] = ratio_with_spread(rounds["one thread"], rounds["default"])
    return {"name": name, "ratios": ratios}


def render(result: dict) -> list[str]:
    return [f"{result['name']} batch {b}: registered 1 thread / default p50 = {r:.2f} [{low:.2f}-{high:.2f}]"
            for b, (r, low, high) in result["ratios"].items()]


if __name__ == "__main__":
    names, seconds = parse_args(__doc__, MODELS, 2.0)
    print(machine_line(), f"cores={os.cpu_count()}")
    results = run_models(names, benchmark_model, render, seconds)
    for batch_size in BATCHES:
        values = [r["ratios"][batch_size][0] for r in results]
        if values:
            print(f"batch {batch_size}: geomean cost of a registered single thread: {geomean(values):.2f}x")
