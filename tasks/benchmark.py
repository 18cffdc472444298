"""benchmark: compiled Keras vs onnxruntime (default, and tuned for this machine) per batch size."""
from __future__ import annotations

from typing import Callable

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from onnx_stage.config import BenchmarkConfig, VariantConfig
from onnx_stage.inputs import default_length, sized_specs
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.parity import generated_inputs
from onnx_stage.sessions import SessionOptionsDict, open_session, tuning_candidates
from onnx_stage.timing import latency_stats, time_interleaved
from onnx_stage.variants import speed_refusal, variant_runtime
from onnx_stage.records import ORT_DEFAULT, ORT_TUNED, BenchReport, OnnxArtifacts, SourceModel, VariantOutcome


def measure_latency(source: SourceModel, onnx_model: OnnxArtifacts, worker: KerasWorker,
                    config: BenchmarkConfig, variants: list[VariantOutcome] = ()) -> BenchReport:
    if not config.enabled:
        return BenchReport()
    rng = np.random.default_rng(0)
    hints = worker.call("input_hints")
    specs, _ = sized_specs(source.inputs, worker)  # a dynamic image size and sequence length the model accepts
    length = default_length(worker, specs)
    batches = {b: generated_inputs(specs, b, rng, None, hints, length) for b in config.batch_sizes}
    candidates: dict[str, SessionOptionsDict] = {ORT_DEFAULT: {}}
    if config.tune_session and (tuned := pick_session_options(onnx_model, batches, config)):
        candidates[ORT_TUNED] = tuned
    rows = []
    for batch_size, inputs in batches.items():
        keras_durations = worker.call("time_predict", inputs=inputs, warmup_runs=config.warmup_runs,
                                      min_runs=config.timed_runs, min_seconds=config.min_seconds)
        rows.append(latency_stats(source.native_runtime, batch_size, keras_durations))
        runners = {name: session_runner(onnx_model, options, inputs) for name, options in candidates.items()}
        runners |= {variant_runtime(v.kind): session_runner(v.onnx_model, candidates.get(ORT_TUNED, {}), inputs)
                    for v in variants}
        timings = time_interleaved(runners, config.warmup_runs, config.timed_runs, config.min_seconds)
        rows += [latency_stats(name, batch_size, durations) for name, durations in timings.items()]
    return keep_tuning_only_if_faster(BenchReport(rows=rows, session_options=candidates.get(ORT_TUNED, {})))


def pick_session_options(onnx_model: OnnxArtifacts, batches: dict[int, list[np.ndarray]],
                         config: BenchmarkConfig) -> SessionOptionsDict:
    """The candidate with the lowest geometric-mean median latency over the batch sizes; {} if none beats default."""
    candidates = [{}, *tuning_candidates(config.tune_thread_counts)]
    log_medians = np.zeros(len(candidates))
    for inputs in batches.values():
        runners = {str(i): session_runner(onnx_model, options, inputs) for i, options in enumerate(candidates)}
        timings = time_interleaved(runners, config.warmup_runs, config.screening_runs, min_seconds=0)
        log_medians += [np.log(np.median(timings[str(i)])) for i in range(len(candidates))]
    best = int(np.argmin(log_medians))
    return candidates[best] if log_medians[best] < log_medians[0] + len(batches) * np.log(0.97) else {}


def keep_tuning_only_if_faster(report: BenchReport) -> BenchReport:
    """Register tuned options only if the full measurement confirms the screening (geometric mean over batches)."""
    if not report.session_options:
        return report
    ratios = [report.speedup(b, baseline=ORT_DEFAULT, runtime=ORT_TUNED) for b in {r.batch_size for r in report.rows}]
    if float(np.exp(np.mean(np.log(ratios)))) > 1.0:
        return report
    return BenchReport(rows=[r for r in report.rows if r.runtime != ORT_TUNED], session_options={})


def session_runner(onnx_model: OnnxArtifacts, options: SessionOptionsDict,
                   inputs: list[np.ndarray]) -> Callable[[], object]:
    session = open_session(onnx_model.onnx_path, options)
    feed = dict(zip([i.name for i in session.get_inputs()], inputs))
    return lambda: session.run(None, feed)


def refuse_slower_variants(variants: list[VariantOutcome], bench: BenchReport,
                           configs: list[VariantConfig]) -> list[VariantOutcome]:
    """The outcomes (one per configured variant, in config order) with those that failed their speed gate refused."""
    gated = []
    for variant, config in zip(variants, configs, strict=True):
        refused = variant.refused or speed_refusal(variant.kind, config.min_speedup, bench)
        gated.append(variant.model_copy(update={"refused": refused, "parity": None if refused else variant.parity}))
    return gated


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(source: SourceModel, onnx_model: OnnxArtifacts, worker: KerasWorker, config: BenchmarkConfig,
              variants: list[VariantOutcome]) -> BenchReport:
    return measure_latency(source, onnx_model, worker, config, variants)


@task(name="speed-gate-variants", cache_policy=NO_CACHE)
def gate_variant_speed(variants: list[VariantOutcome], bench: BenchReport,
                       configs: list[VariantConfig]) -> list[VariantOutcome]:
    return refuse_slower_variants(variants, bench, configs)
