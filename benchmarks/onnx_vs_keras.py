"""Registered ONNX vs compiled Keras, tuned vs default onnxruntime, and registered vs plain tf2onnx output.

Run from the repo root:  .venv/bin/python benchmarks/onnx_vs_keras.py [--models a,b] [--seconds 2.5]

Per architecture (model_zoo/zoo.py models and keras.applications with random weights):
- "registered" is what the stage registers: the model from the stage's default converter routes, run with the
  session options the stage picks (`onnx_stage.tasks.benchmark.pick_session_options` screens them;
  keep_tuning_only_if_faster
  keeps them only if this run's full measurement confirms them — the same two functions measure_latency uses).
- "keras" is compiled Keras (`predict_on_batch`) in the stage's Keras child process.
- "default" is the stage's ONNX model with default onnxruntime session options; "tuned" the picked options.
- "plain tf2onnx" is `tf2onnx.convert.from_function` on the model's traced call with default settings (the
  stage's `tf2onnx` route, opset 17, without the stage's graph optimisations), run with a default session.
- "same file" is a second default session of the registered model: its ratio to "default" is this run's noise
  floor, what two identical computations measure apart (a ratio to plain tf2onnx inside it is a tie).
All contenders of a model and batch size are timed interleaved in rounds; a ratio is a ratio of medians
(above 1: the second-named contender is faster), with the range of per-round ratios in brackets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from bench_common import (geomean, keras_timer, load_and_convert, machine_line, make_inputs, median_ms, ort_timer,
                          parse_args, ratio_with_spread, run_models, time_rounds)
from onnx_stage.config import BenchmarkConfig, ConvertConfig
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.timing import latency_stats
from onnx_stage.tasks.benchmark import keep_tuning_only_if_faster, pick_session_options
from onnx_stage.tasks.convert import convert_source
from onnx_stage.records import KERAS, ORT_DEFAULT, ORT_TUNED, BenchReport, OnnxArtifacts, SourceModel

MODELS = ["dense", "conv1d", "conv2d", "recurrent", "rnn_bidirectional_gru", "attention", "transformer_block",
          "MobileNetV3Small_96", "EfficientNetB0_64", "MobileNetV2_224"]  # ResNet50: benchmarks/gflops.py
BATCHES = [1, 32]
PLAIN = "plain tf2onnx"
SAME_FILE = "same file"


def screening_runs(seconds_per_call: float) -> int:
    """Screen 5 candidates × 2 batch sizes in about 15 s; the stage's bounds (3..30 runs)."""
    return int(min(30, max(3, 1.5 / max(seconds_per_call, 1e-4))))


def benchmark_model(worker: KerasWorker, name: str, model_file: Path, work_dir: Path, seconds: float) -> dict:
    source, registered = load_and_convert(worker, name, model_file, work_dir)
    batches = {b: make_inputs(source, worker, b) for b in BATCHES}
    plain, plain_failure = plain_tf2onnx(source, worker, work_dir / "plain", batches[1])
    probe = ort_timer(registered.onnx_path, {}, batches[max(BATCHES)])
    probe(2, 0.0)
    per_call = float(min(probe(3, 0.0)))
    config = BenchmarkConfig(batch_sizes=BATCHES, warmup_runs=3, screening_runs=screening_runs(per_call))
    tuned = pick_session_options(registered, batches, config)

    rounds, rows = {}, []
    for batch, inputs in batches.items():
        timers = {KERAS: keras_timer(worker, inputs), ORT_DEFAULT: ort_timer(registered.onnx_path, {}, inputs),
                  SAME_FILE: ort_timer(registered.onnx_path, {}, inputs)}
        if plain:
            timers[PLAIN] = ort_timer(plain.onnx_path, {}, inputs)
        if tuned:
            timers[ORT_TUNED] = ort_timer(registered.onnx_path, tuned, inputs)
        rounds[batch] = time_rounds(timers, seconds)
        rows += [latency_stats(runtime, batch, [d for r in durations for d in r])
                 for runtime, durations in rounds[batch].items() if runtime not in (PLAIN, SAME_FILE)]
    report = keep_tuning_only_if_faster(BenchReport(rows=rows, session_options=tuned))
    refused = {step: why for step, why in registered.graph_optimizations_refused.items() if why != "nothing to rewrite"}
    return {"name": name, "route": registered.route, "optimizations": registered.graph_optimizations,
            "refused": refused, "tuned": tuned, "options": report.session_options,
            "registered": report.registered_runtime, "rounds": rounds, "screening_runs": config.screening_runs,
            "plain_failure": plain_failure}


def plain_tf2onnx(source: SourceModel, worker: KerasWorker, out_dir: Path,
                  inputs: list[np.ndarray]) -> tuple[OnnxArtifacts | None, str | None]:
    """The stage's `tf2onnx` route alone (from_function, default settings), if its model runs on the inputs."""
    try:
        plain = convert_source(source, worker, ConvertConfig(routes=["tf2onnx"], graph_optimizations=[]), out_dir)
        ort_timer(plain.onnx_path, {}, inputs)(1, 0.0)
        return plain, None
    except Exception as error:  # a plain-converter failure is a finding, not a reason to skip the model
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def render(result: dict) -> list[str]:
    lines = [f"{result['name']}  (stage route {result['route']}; graph optimisations kept: "
             f"{', '.join(result['optimizations']) or 'none'}"
             + "".join(f"; {step} refused: {why}" for step, why in result["refused"].items())
             + f"; screened {result['screening_runs']} runs/candidate; "
             f"picked {result['tuned'] or 'default'}; registered with {result['options'] or 'default options'})"]
    for batch, rounds in result["rounds"].items():
        registered = rounds[result["registered"]]
        keras, spread_lo, spread_hi = ratio_with_spread(rounds[KERAS], registered)
        plain = ratio_with_spread(rounds[PLAIN], registered) if PLAIN in rounds else None
        tuned = (ratio_with_spread(rounds[ORT_DEFAULT], rounds[ORT_TUNED]) if ORT_TUNED in rounds else None)
        same = ratio_with_spread(rounds[SAME_FILE], rounds[ORT_DEFAULT])
        lines.append(
            f"  batch {batch:>2}: keras {median_ms(rounds[KERAS]):8.2f} ms  registered {median_ms(registered):8.2f} ms"
            f"  keras/registered {keras:6.2f} [{spread_lo:.2f}–{spread_hi:.2f}]"
            + (f"  default/tuned {tuned[0]:5.2f} [{tuned[1]:.2f}–{tuned[2]:.2f}]" if tuned
               else "  default/tuned  1.00 (stage kept default options)")
            + (f"  plain-tf2onnx/registered {plain[0]:5.2f} [{plain[1]:.2f}–{plain[2]:.2f}]" if plain
               else f"  plain-tf2onnx: unusable ({result['plain_failure']})")
            + f"  same-file/default {same[0]:4.2f} [{same[1]:.2f}–{same[2]:.2f}]")
        result.setdefault("ratios", {}).setdefault(batch, {}).update(
            keras=keras, tuned=tuned[0] if tuned else 1.0, plain=plain[0] if plain else None, same=same[0])
    return lines


def main() -> int:
    names, seconds = parse_args(__doc__, MODELS, 2.0)
    print(machine_line(), flush=True)
    results = run_models(names, benchmark_model, render, seconds)

    print("\nsummary (ratio of medians; > 1 means the second-named is faster)")
    for batch in BATCHES:
        keras = [r["ratios"][batch]["keras"] for r in results]
        tuned = [r["ratios"][batch]["tuned"] for r in results]
        plain = [r["ratios"][batch]["plain"] for r in results if r["ratios"][batch]["plain"] is not None]
        same = [r["ratios"][batch]["same"] for r in results]
        print(f"batch {batch:>2}: keras/registered min {min(keras):.2f}, geomean {geomean(keras):.2f} | "
              f"default/tuned min {min(tuned):.2f}, geomean {geomean(tuned):.2f} | "
              f"plain-tf2onnx/registered min {min(plain):.2f}, geomean {geomean(plain):.2f} "
              f"({len(plain)} models; plain tf2onnx output unusable on {len(results) - len(plain)}) | "
              f"same-file/default {min(same):.2f}–{max(same):.2f} (noise floor)")
    print(f"architectures: {len(results)}/{len(names)}")
    print(f"geomean batch1: {geomean([r['ratios'][1]['keras'] for r in results]):.2f}")
    print(f"geomean batch32: {geomean([r['ratios'][32]['keras'] for r in results]):.2f}")
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
