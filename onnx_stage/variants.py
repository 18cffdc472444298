"""Smaller/faster variants of a converted model (fp16 weights, dynamic or static int8) and the gates they pass.

A variant is registered only when it passes all of:
- accuracy: its own atol/rtol and argmax agreement against Keras (tasks/validate.py check_parity), and a cosine
  similarity of each output of at least min_cosine on every validation case;
- an informative gate: if a constant output (Keras' mean row) would pass the same gate, the gate proves nothing
  (random-weight models give every input the same output, and so can badly generated inputs). Such a variant is
  **refused**, not registered with a flag: a consumer picking `champion-int8_static` trusts that it was checked.
  The refusal names the fix (sample data on which the outputs differ, or tighter tolerances);
- speed: fp32 p50 / variant p50 at batch 1 above min_speedup in this run's benchmark (int8 kinds by default; fp16
  exists for its size: on this CPU it ran at 0.87-0.93x the fp32 speed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from onnx_stage.config import VariantConfig, VariantKind
from onnx_stage.parity import compare_output, cosine_at_least, output_passes
from onnx_stage.quantize import quantize_static_qdq
from onnx_stage.records import BenchReport, OutputParity, ParityReport

CALIBRATED_KINDS: set[VariantKind] = {"int8_static"}


def build_variant(kind: VariantKind, onnx_path: Path, out_dir: Path,
                  calibration: list[np.ndarray] | None = None) -> Path:
    """The variant's model file in out_dir; kinds in CALIBRATED_KINDS need calibration inputs (one array per input)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    variant_path = out_dir / "model.onnx"
    if kind == "fp16":
        # float32 inputs/outputs keep the signature consumers already use
        converted = OnnxModel(convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True))
        converted.topological_sort()  # the converter appends its input Casts after the nodes that read them
        onnx.save(converted.model, str(variant_path))
    elif kind == "int8_dynamic":
        # only matrix products: dynamic quantisation turns convolutions into ConvInteger, which is 2-10x slower than
        # fp32 on this kind of CPU (no VNNI; benchmarks/int8_speedup.py)
        quantize_dynamic(onnx_path, variant_path, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    elif kind == "int8_static":
        if not calibration:
            raise ValueError("int8_static needs calibration inputs (one array per model input)")
        quantize_static_qdq(onnx_path, out_dir, calibration)
    else:
        raise ValueError(f"unknown variant kind {kind!r}; choose one of fp16, int8_dynamic, int8_static")
    return variant_path


def passes_gate(parity: OutputParity, variant: VariantConfig) -> bool:
    return output_passes(parity, variant.min_argmax_agreement) and cosine_at_least(parity, variant.min_cosine)


def cosine_refusal(report: ParityReport, variant: VariantConfig) -> str | None:
    """Why the variant fails its cosine floor on some validation case, or None."""
    low = [(case.label, output) for case in report.cases for output in case.outputs
           if not cosine_at_least(output, variant.min_cosine)]
    if not low:
        return None
    figures = "; ".join(f"{label} / {output.output}: {output.cosine_similarity:.5f}" for label, output in low[:4])
    return f"failed its accuracy gate: cosine similarity to Keras below min_cosine {variant.min_cosine:g}: {figures}"


def vacuous_outputs(keras_cases: list[list[np.ndarray]], output_names: list[str], variant: VariantConfig) -> list[str]:
    """The outputs on which the variant's gate cannot tell a model that ignores its input: on every validation case,
    Keras' mean row repeated for every row would pass the gate (tolerances, argmax agreement, cosine)."""
    informative = set()
    for outputs in keras_cases:
        for name, expected in zip(output_names, outputs):
            constant = np.broadcast_to(expected.mean(axis=0, dtype=np.float64), expected.shape)
            if not passes_gate(compare_output(name, expected, constant, variant.atol, variant.rtol), variant):
                informative.add(name)
    return [name for name in output_names if name not in informative]


def vacuous_refusal(keras_cases: list[list[np.ndarray]], output_names: list[str],
                    variant: VariantConfig) -> str | None:
    """Why the variant's gate proves nothing on this model (see vacuous_outputs), or None."""
    vacuous = vacuous_outputs(keras_cases, output_names, variant)
    if not vacuous:
        return None
    return (f"its gate is VACUOUS on output(s) {', '.join(vacuous)}: Keras gives (nearly) the same output for every "
            f"input row, so a constant output would pass atol={variant.atol:g}, rtol={variant.rtol:g}, argmax "
            f"agreement ≥ {variant.min_argmax_agreement:g}, cosine ≥ {variant.min_cosine:g} and the gate proves "
            "nothing (random weights do this). Set validation.sample_data to inputs on which the model's outputs differ, "
            "or tighten this variant's atol/rtol below the spread of its outputs")


def variant_runtime(kind: str) -> str:
    """The benchmark's runtime label of a variant."""
    return f"onnxruntime {kind}"


def speed_refusal(kind: str, min_speedup: float | None, bench: BenchReport) -> str | None:
    """Why the variant is refused on speed (fp32 p50 / variant p50 at batch 1 not above min_speedup), or None."""
    if min_speedup is None:
        return None
    ratio = bench.speedup(1, baseline=bench.registered_runtime, runtime=variant_runtime(kind))
    if ratio is None:
        return (f"its speed gate (min_speedup {min_speedup:g}) has no batch-1 measurement: set benchmark.enabled=true "
                "with 1 in benchmark.batch_sizes, or min_speedup: null for this variant")
    if ratio <= min_speedup:
        return (f"not faster than the fp32 model at batch 1: fp32 p50 / {kind} p50 = {ratio:.2f} "
                f"(needs > {min_speedup:g}, min_speedup)")
    return None
