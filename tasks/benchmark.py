"""benchmark: onnxruntime vs compiled Keras (predict_on_batch) latency per batch size, warm-up then timed runs."""
from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from prefect import task
from prefect.cache_policies import NO_CACHE

from onnx_stage.config import BenchmarkConfig
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.parity import generated_inputs
from onnx_stage.timing import latency_stats
from tasks.records import BenchReport, OnnxArtifacts, SourceModel


def measure_latency(source: SourceModel, onnx_model: OnnxArtifacts, worker: KerasWorker,
                    config: BenchmarkConfig) -> BenchReport:
    if not config.enabled:
        return BenchReport()
    session = ort.InferenceSession(str(onnx_model.onnx_path), providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(0)
    rows = []
    for batch_size in config.batch_sizes:
        inputs = generated_inputs(source.inputs, batch_size, rng, example=None)
        keras_durations = worker.call("time_predict", inputs=inputs, warmup_runs=config.warmup_runs,
                                      timed_runs=config.timed_runs)
        feed = dict(zip(input_names, inputs))
        rows.append(latency_stats("keras", batch_size, keras_durations))
        rows.append(latency_stats("onnxruntime", batch_size, time_session(session, feed, config)))
    return BenchReport(rows=rows)


def time_session(session: ort.InferenceSession, feed: dict[str, np.ndarray], config: BenchmarkConfig) -> list[float]:
    for _ in range(config.warmup_runs):
        session.run(None, feed)
    durations = []
    for _ in range(config.timed_runs):
        started = time.perf_counter()
        session.run(None, feed)
        durations.append(time.perf_counter() - started)
    return durations


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(source: SourceModel, onnx_model: OnnxArtifacts, worker: KerasWorker,
              config: BenchmarkConfig) -> BenchReport:
    return measure_latency(source, onnx_model, worker, config)
