"""The stage's int8 variants vs the fp32 ONNX model on convnets: dynamic int8 and static QDQ int8.

Run from the repo root:  .venv/bin/python benchmarks/int8_speedup.py [--models a,b] [--seconds 3]

Per convnet (keras.applications / zoo, random weights):
- fp32: the stage's converted model (default routes).
- int8_dynamic and int8_static: the stage's variants, built and gated by `tasks.validate.gate_variants` exactly as a
  flow run does (onnx_stage/variants.py; int8_static is onnx_stage/quantize.py: quant_pre_process, quantize_static
  in QDQ format, per-channel 7-bit int8 weights, uint8 activations, Softmax left in float, calibrated on generated inputs
  made as validation makes them).
Gate: the stage's variant gate with atol 0.05 + rtol 0.1, argmax agreement ≥ 0.9, cosine ≥ the kind's default,
against Keras on one generated batch of GATE_BATCH rows, and refused as VACUOUS when a constant output would pass it
(random-weight classifiers give every input nearly the same flat softmax). Ratios are reported for every model; the
target (int8 ≥ 1.8× fp32) counts only models whose int8 model passed. The stage's speed gate (min_speedup) is off
here: this script measures the ratio itself.
All three models run with default onnxruntime session options, timed interleaved in rounds (medians).
"""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from bench_common import (cpu_flags, geomean, load_and_convert, machine_line, make_inputs, median_ms, ort_timer,
                          parse_args, ratio_with_spread, run_models, time_rounds)

from onnx_stage.config import StageConfig, ValidateConfig, VariantConfig
from onnx_stage.keras_worker import KerasWorker
from tasks.records import VariantOutcome
from tasks.validate import gate_variants

MODELS = ["MobileNetV2_224", "ResNet50_128", "EfficientNetB0_64", "MobileNetV3Small_96"]
KINDS = ["int8_dynamic", "int8_static"]
BATCHES = [1, 8]
GATE_BATCH = 32
GATE = {"atol": 0.05, "rtol": 0.1, "min_argmax_agreement": 0.9}
QUANT_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
             "QuantizeLinear", "DequantizeLinear", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearMul"}


def gate_figures(outcome: VariantOutcome) -> str:
    if outcome.refused:
        return f"REFUSED ({outcome.refused[:400]})"
    output = outcome.parity.cases[-1].outputs[0]
    return (f"passed (argmax agreement {output.argmax_agreement:.0%}, max|Δ| {output.max_abs:.2g}, "
            f"cosine {output.cosine_similarity:.5f})")


def op_census(path: Path) -> str:
    counts = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in QUANT_OPS)
    return ", ".join(f"{op}×{n}" for op, n in counts.most_common()) or "no quantized ops"


def kernel_profile(path: Path, inputs: list[np.ndarray], runs: int = 10, top: int = 5) -> str:
    """Share of onnxruntime's node time per op type after its graph optimisations (what actually runs)."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in session.get_inputs()], inputs))
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1
    return ", ".join(f"{op} {us / total:.0%}" for op, us in per_op.most_common(top))


def benchmark_model(worker: KerasWorker, name: str, model_file: Path, work_dir: Path, seconds: float) -> dict:
    source, fp32 = load_and_convert(worker, name, model_file, work_dir)
    config = StageConfig(validation=ValidateConfig(batch_sizes=[GATE_BATCH]),
                         variants=[VariantConfig(kind=kind, **GATE, min_speedup=None) for kind in KINDS])
    outcomes = dict(zip(KINDS, gate_variants(source, fp32, worker, config, work_dir / "variants")))
    paths = {"fp32": fp32.onnx_path, **{kind: outcome.onnx_model.onnx_path for kind, outcome in outcomes.items()}}
    result = {"name": name, "paths": paths, "rounds": {},
              "passed": {kind: outcome.refused is None for kind, outcome in outcomes.items()},
              "gates": {kind: gate_figures(outcome) for kind, outcome in outcomes.items()}}
    for batch in BATCHES:
        inputs = make_inputs(source, worker, batch)
        result["rounds"][batch] = time_rounds({k: ort_timer(p, {}, inputs) for k, p in paths.items()}, seconds)
    profile_inputs = make_inputs(source, worker, 1)
    result["profiles"] = {k: kernel_profile(p, profile_inputs) for k, p in paths.items()}
    return result


def render(result: dict) -> list[str]:
    lines = [result["name"]]
    for kind in KINDS:
        lines.append(f"  {kind:16} gate: {result['gates'][kind]}")
        lines.append(f"  {kind:16} ops: {op_census(result['paths'][kind])}")
    for kind, profile in result["profiles"].items():
        lines.append(f"  {kind:16} node time by op (batch 1): {profile}")
    for batch, rounds in result["rounds"].items():
        parts = [f"fp32 {median_ms(rounds['fp32']):8.2f} ms"]
        for kind in KINDS:
            ratio, lo, hi = ratio_with_spread(rounds["fp32"], rounds[kind])
            result.setdefault("ratios", {}).setdefault(kind, {})[batch] = ratio
            parts.append(f"{kind} {median_ms(rounds[kind]):8.2f} ms fp32/{kind} {ratio:5.2f} [{lo:.2f}–{hi:.2f}]")
        lines.append(f"  batch {batch:>2}: " + "  ".join(parts))
    return lines


def main() -> int:
    names, seconds = parse_args(__doc__, MODELS, 3.0)
    flags = cpu_flags()
    print(machine_line())
    print(f"cpu: {flags['model']}; int8-relevant flags: "
          + ", ".join(f"{f}={'yes' if f in flags['flags'] else 'NO'}"
                      for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")))
    if not {"avx512_vnni", "avx_vnni"} & flags["flags"]:
        print("  no VNNI on this CPU: onnxruntime's MLAS runs int8 GEMMs with its AVX2 U8S8 kernels "
              "(vpmaddubsw + vpmaddwd, about 2× the fp32 FMA rate at best, not the 4× of VNNI)")
    print(f"onnxruntime {ort.__version__}; gate: {GATE} on one generated batch of {GATE_BATCH}", flush=True)
    results = run_models(names, benchmark_model, render, seconds)

    print("\nsummary: fp32 / int8 latency ratio (> 1: int8 faster); target ≥ 1.8 where the int8 model passes its gate")
    for kind in KINDS:
        for batch in BATCHES:
            passing = [r["ratios"][kind][batch] for r in results if r["passed"][kind]]
            every = [r["ratios"][kind][batch] for r in results]
            print(f"{kind:16} batch {batch:>2}: gate passed {len(passing)}/{len(results)}; "
                  f"geomean (passed) {geomean(passing):.2f}; geomean (all) {geomean(every):.2f}; "
                  f"per model " + ", ".join(f"{r['name']} {r['ratios'][kind][batch]:.2f}" for r in results))
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
