"""int8 variants vs the fp32 ONNX model on convnets: the stage's dynamic int8, and static QDQ int8 for comparison.

Run from the repo root:  .venv/bin/python benchmarks/int8_speedup.py [--models a,b] [--seconds 3]

Per convnet (keras.applications / zoo, random weights):
- fp32: the stage's converted model (default routes).
- int8_dynamic: the stage's variant, `onnx_stage.variants.build_variant("int8_dynamic", ...)`
  (quantize_dynamic, per-channel int8 weights: ConvInteger / MatMulInteger + DynamicQuantizeLinear).
- int8_static_qdq (this script only, not a stage variant): `quantize_static` with QuantFormat.QDQ, per-channel int8
  weights, uint8 activations (U8S8, what onnxruntime recommends on x86 without VNNI), Softmax left in float, MinMax
  calibration on generated inputs, after onnxruntime's quant_pre_process; onnxruntime fuses the QDQ pairs into
  QLinearConv / QLinearMatMul.
Gate (the stage's): tasks.validate.gate_variants for int8_dynamic, and tasks.validate.check_parity with the same
tolerances for the QDQ model, against Keras on one generated batch of GATE_BATCH rows: every softmax element within
atol 0.05 + rtol 0.1, argmax agreement ≥ 0.9. Random-weight classifiers have flat softmax outputs, so the
atol/rtol part is lenient; argmax agreement is what can fail. Ratios are reported for every model; the target
(int8 ≥ 1.8× fp32) counts only models whose int8 model passed.
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
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnx_stage.config import StageConfig, ValidateConfig, VariantConfig
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.rendering import write_renderings
from tasks.records import OnnxArtifacts, ParityReport, SourceModel
from tasks.validate import ParityError, check_parity, gate_variants

MODELS = ["MobileNetV2_224", "ResNet50_128", "EfficientNetB0_64", "MobileNetV3Small_96"]
BATCHES = [1, 8]
GATE_BATCH = 32
GATE = {"atol": 0.05, "rtol": 0.1, "min_argmax_agreement": 0.9}
CALIBRATION_SAMPLES = 32
QUANT_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
             "QuantizeLinear", "DequantizeLinear", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearMul"}


class GeneratedCalibration(CalibrationDataReader):
    def __init__(self, input_names: list[str], samples: list[list[np.ndarray]]) -> None:
        self._feeds = iter([dict(zip(input_names, s)) for s in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def build_static_qdq(source: SourceModel, worker: KerasWorker, fp32_path: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [i.name for i in ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()]
    samples = [make_inputs(source, worker, 1, seed=100 + i) for i in range(CALIBRATION_SAMPLES)]
    prepared, qdq_path = out_dir / "prepared.onnx", out_dir / "model.onnx"
    quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)  # onnx shape inference + basic optimisation
    # a quantized Softmax has a fixed output scale of 1/256: a random-weight model's flat probabilities (~1/1000)
    # all round to 0, so the output Softmax stays float
    softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
    quantize_static(prepared, qdq_path, GeneratedCalibration(names, samples), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=softmax)
    return qdq_path


def gate_figures(parity: ParityReport | None, refused: str | None) -> str:
    if refused:
        return f"REFUSED ({refused[:220]})"
    output = parity.cases[-1].outputs[0]
    keras = np.load(parity.reference_outputs)
    reference = keras[keras.files[0]]
    vacuous = ("; VACUOUS: Keras gives every input the same output (random weights), the gate cannot tell a "
               "broken model" if reference.ndim > 1 and len(reference) > 1 and np.ptp(reference, axis=0).max() < 1e-6
               else "")
    return (f"passed (argmax agreement {output.argmax_agreement:.0%}, max|Δ| {output.max_abs:.2g}, "
            f"cosine {output.cosine_similarity:.4f}{vacuous})")


def gate_static(source: SourceModel, fp32: OnnxArtifacts, qdq_path: Path, worker: KerasWorker,
                config: ValidateConfig) -> tuple[ParityReport | None, str | None]:
    artifacts = fp32.model_copy(update={"onnx_path": qdq_path, "json_path": qdq_path.with_suffix(".json"),
                                        "text_path": qdq_path.with_suffix(".onnx.txt")})
    write_renderings(onnx.load(str(qdq_path)), artifacts.json_path, artifacts.text_path, 1000)
    try:
        return check_parity(source, artifacts, worker, config, qdq_path.parent), None
    except ParityError as refusal:
        return None, f"failed its accuracy gate: {refusal.figures}"


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
    gate = {**GATE}
    config = StageConfig(validation=ValidateConfig(batch_sizes=[GATE_BATCH]),
                         variants=[VariantConfig(kind="int8_dynamic", **gate)])
    (dynamic,) = gate_variants(source, fp32, worker, config, work_dir / "variants")
    qdq_path = build_static_qdq(source, worker, fp32.onnx_path, work_dir / "int8_static_qdq")
    static_parity, static_refused = gate_static(source, fp32, qdq_path, worker,
                                                config.validation.model_copy(update={**gate, "per_output": {}}))
    paths = {"fp32": fp32.onnx_path, "int8_dynamic": dynamic.onnx_model.onnx_path, "int8_static_qdq": qdq_path}
    result = {"name": name, "paths": paths, "rounds": {},
              "passed": {"int8_dynamic": dynamic.refused is None, "int8_static_qdq": static_refused is None},
              "gates": {"int8_dynamic": gate_figures(dynamic.parity, dynamic.refused),
                        "int8_static_qdq": gate_figures(static_parity, static_refused)}}
    for batch in BATCHES:
        inputs = make_inputs(source, worker, batch)
        result["rounds"][batch] = time_rounds({k: ort_timer(p, {}, inputs) for k, p in paths.items()}, seconds)
    profile_inputs = make_inputs(source, worker, 1)
    result["profiles"] = {k: kernel_profile(p, profile_inputs) for k, p in paths.items()}
    return result


def render(result: dict) -> list[str]:
    lines = [result["name"]]
    for kind in ("int8_dynamic", "int8_static_qdq"):
        lines.append(f"  {kind:16} gate: {result['gates'][kind]}")
        lines.append(f"  {kind:16} ops: {op_census(result['paths'][kind])}")
    for kind, profile in result["profiles"].items():
        lines.append(f"  {kind:16} node time by op (batch 1): {profile}")
    for batch, rounds in result["rounds"].items():
        parts = [f"fp32 {median_ms(rounds['fp32']):8.2f} ms"]
        for kind in ("int8_dynamic", "int8_static_qdq"):
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
    for kind in ("int8_dynamic", "int8_static_qdq"):
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
