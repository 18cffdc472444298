"""benchmark: compiled Keras vs onnxruntime (default, and tuned for this machine) per batch size."""
from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from onnx_stage.config import BenchmarkConfig
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.parity import generated_inputs
from onnx_stage.sessions import SessionOptionsDict, open_session, tuning_candidates
from onnx_stage.timing import latency_stats, time_calls
from tasks.records import KERAS, ORT_DEFAULT, ORT_TUNED, BenchReport, OnnxArtifacts, SourceModel, VariantOutcome


def measure_latency(source: SourceModel, onnx_model: OnnxArtifacts, worker: KerasWorker,
                    config: BenchmarkConfig, variants: list[VariantOutcome] = ()) -> BenchReport:
    if not config.enabled:
        return BenchReport()
    rng = np.random.default_rng(0)
    hints = worker.call("input_hints")
    batches = {b: generated_inputs(source.inputs, b, rng, example=None, hints=hints) for b in config.batch_sizes}
    tuned = pick_session_options(onnx_model, batches, config) if config.tune_session else {}
    configurations = [(ORT_DEFAULT, {})] + ([(ORT_TUNED, tuned)] if tuned else [])
    rows = []
    for batch_size, inputs in batches.items():
        keras_durations = worker.call("time_predict", inputs=inputs, warmup_runs=config.warmup_runs,
                                      min_runs=config.timed_runs, min_seconds=config.min_seconds)
        rows.append(latency_stats(KERAS, batch_size, keras_durations))
        for runtime, options in configurations:
            rows.append(latency_stats(runtime, batch_size, time_session(onnx_model, options, inputs,
                                                                        config.timed_runs, config)))
        for variant in variants:
            rows.append(latency_stats(f"onnxruntime {variant.kind}", batch_size,
                                      time_session(variant.onnx_model, tuned, inputs, config.timed_runs, config)))
    return BenchReport(rows=rows, session_options=tuned)


def pick_session_options(onnx_model: OnnxArtifacts, batches: dict[int, list[np.ndarray]],
                         config: BenchmarkConfig) -> SessionOptionsDict:
    """The candidate with the lowest geometric-mean median latency over the batch sizes; {} if none beats default."""
    def score(options: SessionOptionsDict) -> float:
        medians = [np.median(time_session(onnx_model, options, inputs, config.screening_runs, config, budget=0))
                   for inputs in batches.values()]
        return float(np.exp(np.mean(np.log(medians))))

    default_score = score({})
    best_score, best = min(((score(c), c) for c in tuning_candidates()), key=lambda scored: scored[0])
    return best if best_score < 0.97 * default_score else {}


def time_session(onnx_model: OnnxArtifacts, options: SessionOptionsDict, inputs: list[np.ndarray], runs: int,
                 config: BenchmarkConfig, budget: float | None = None) -> list[float]:
    session = open_session(onnx_model.onnx_path, options)
    feed = dict(zip([i.name for i in session.get_inputs()], inputs))
    return time_calls(lambda: session.run(None, feed), config.warmup_runs, runs,
                      config.min_seconds if budget is None else budget)


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(source: SourceModel, onnx_model: OnnxArtifacts, worker: KerasWorker, config: BenchmarkConfig,
              variants: list[VariantOutcome]) -> BenchReport:
    return measure_latency(source, onnx_model, worker, config, variants)
