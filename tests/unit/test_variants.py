"""The variant gates' pure parts: config defaults, cosine floor, vacuous-gate detection, speed gate, static int8."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_stage.config import VariantConfig
from onnx_stage.parity import compare_output
from onnx_stage.variants import (build_variant, cosine_refusal, speed_refusal, vacuous_outputs, vacuous_refusal,
                                 variant_runtime)
from onnx_stage.tasks.benchmark import refuse_slower_variants
from onnx_stage.records import (ORT_DEFAULT, ORT_TUNED, BenchReport, CaseOutputs, LatencyStats, OnnxArtifacts,
                                ParityCase, ParityReport, VariantOutcome)

INT8 = VariantConfig(kind="int8_static", atol=0.05, rtol=0.1, min_argmax_agreement=0.9)


def test_defaults_follow_the_kind_and_an_explicit_null_disables_the_speed_gate() -> None:
    fp16 = VariantConfig(kind="fp16", atol=1e-3, rtol=1e-2)
    assert (fp16.min_cosine, fp16.min_speedup) == (0.999, None)
    assert (INT8.min_cosine, INT8.min_speedup) == (0.99, 1.0)
    assert VariantConfig(kind="int8_dynamic", atol=1, rtol=1, min_speedup=None).min_speedup is None
    assert VariantConfig.model_validate(INT8.model_dump()) == INT8  # what the Prefect form round-trips


def report_with(cases: list[tuple[str, np.ndarray, np.ndarray]], tmp_path: Path) -> ParityReport:
    """A ParityReport of Keras (expected) vs variant (actual) outputs named "probs"."""
    parity_cases = [ParityCase(label=label, batch_size=len(expected),
                               outputs=[compare_output("probs", expected, actual, INT8.atol, INT8.rtol)])
                    for label, expected, actual in cases]
    return ParityReport(passed=True, atol=INT8.atol, rtol=INT8.rtol, cases=parity_cases,
                        reference_inputs=tmp_path / "unused.npz", reference_outputs=tmp_path / "unused.npz",
                        keras_outputs=CaseOutputs.save([[expected] for _, expected, _ in cases], tmp_path / "keras.npz"))


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_cosine_floor_names_the_case_and_the_figure(tmp_path: Path) -> None:
    expected = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    actual = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.2]])  # within atol+rtol? no matter: cosine ≈ 0.981
    report = report_with([("generated batch 2", expected, actual)], tmp_path)
    assert "below min_cosine 0.99: generated batch 2 / probs: 0.98058" in cosine_refusal(report, INT8)
    assert cosine_refusal(report, INT8.model_copy(update={"min_cosine": 0.98})) is None


def test_a_flat_output_makes_the_gate_vacuous_and_the_refusal_names_the_fix() -> None:
    rng = np.random.default_rng(0)
    # random weights: ~1/1000 everywhere, and (nearly) the same row whatever the input, the same argmax included
    flat = softmax(np.tile(rng.normal(0, 1e-2, (1, 1000)), (16, 1)) + rng.normal(0, 1e-9, (16, 1000)))
    assert vacuous_outputs([[flat]], ["probs"], INT8) == ["probs"]
    refusal = vacuous_refusal([[flat]], ["probs"], INT8)
    assert "VACUOUS on output(s) probs" in refusal and "validation.sample_data" in refusal


def test_flat_outputs_whose_argmax_changes_with_the_input_still_make_an_informative_gate() -> None:
    rng = np.random.default_rng(0)
    flat_but_ranked = softmax(rng.normal(0, 1e-4, (16, 1000)))  # a constant output would agree on ~1/1000 rows
    assert vacuous_outputs([[flat_but_ranked]], ["probs"], INT8) == []


def test_outputs_that_differ_per_row_make_an_informative_gate() -> None:
    rng = np.random.default_rng(0)
    trained = softmax(rng.normal(0, 5, (16, 10)))  # confident, and a different class for different inputs
    assert vacuous_outputs([[trained]], ["probs"], INT8) == []
    regression = rng.normal(0, 1, (16, 3))  # no argmax: tolerances and cosine alone decide
    assert vacuous_outputs([[regression]], ["y"], INT8) == []


def test_one_informative_case_is_enough_and_a_single_row_never_is() -> None:
    rng = np.random.default_rng(0)
    one_row, varied = rng.normal(0, 1, (1, 3)), rng.normal(0, 1, (16, 3))
    assert vacuous_outputs([[one_row]], ["y"], INT8) == ["y"]
    assert vacuous_outputs([[one_row], [varied]], ["y"], INT8) == []


def test_tolerances_wider_than_the_spread_of_the_outputs_are_vacuous() -> None:
    rng = np.random.default_rng(0)
    outputs = 10 + rng.normal(0, 0.01, (16, 1))  # rows differ by ~0.01, well inside atol 0.05 + rtol 0.1 × 10
    assert vacuous_outputs([[outputs]], ["y"], INT8) == ["y"]
    assert vacuous_outputs([[outputs]], ["y"], INT8.model_copy(update={"atol": 1e-3, "rtol": 0})) == []


def bench_at_batch_1(**p50_ms: float) -> BenchReport:
    rows = [LatencyStats(runtime=runtime, batch_size=1, runs=10, p50_ms=ms, p95_ms=ms, p99_ms=ms, mean_ms=ms,
                         mean_ci95_ms=0.0, throughput_per_s=1e3 / ms) for runtime, ms in p50_ms.items()]
    return BenchReport(rows=rows)


def test_speed_gate_refuses_a_variant_that_is_not_faster_and_says_the_ratio() -> None:
    bench = bench_at_batch_1(**{ORT_DEFAULT: 10.0, variant_runtime("int8_static"): 8.0,
                                variant_runtime("int8_dynamic"): 25.0})
    assert speed_refusal("int8_static", 1.0, bench) is None
    assert "fp32 p50 / int8_dynamic p50 = 0.40 (needs > 1" in speed_refusal("int8_dynamic", 1.0, bench)
    assert "= 1.25 (needs > 1.5" in speed_refusal("int8_static", 1.5, bench)
    assert speed_refusal("int8_dynamic", None, bench) is None


def test_speed_gate_compares_with_the_runtime_fp32_is_served_with() -> None:
    bench = bench_at_batch_1(**{ORT_DEFAULT: 20.0, ORT_TUNED: 10.0, variant_runtime("int8_static"): 12.0})
    bench.session_options = {"intra_op_num_threads": 1}
    assert "= 0.83" in speed_refusal("int8_static", 1.0, bench)


def test_speed_gate_without_a_batch_1_measurement_refuses_and_names_the_fix() -> None:
    refusal = speed_refusal("int8_static", 1.0, BenchReport())
    assert "no batch-1 measurement" in refusal and "benchmark.enabled=true" in refusal
    assert "min_speedup: null" in refusal


def test_slower_variants_lose_their_parity_and_keep_earlier_refusals(tmp_path: Path) -> None:
    artifacts = OnnxArtifacts(onnx_path=tmp_path / "m.onnx", json_path=tmp_path / "m.json",
                              text_path=tmp_path / "m.txt", route="test", opset=17, conversion_seconds=0)
    parity = report_with([("case", np.eye(2), np.eye(2))], tmp_path)
    outcomes = [VariantOutcome(kind="int8_static", onnx_model=artifacts, parity=parity),
                VariantOutcome(kind="fp16", onnx_model=artifacts, parity=parity),
                VariantOutcome(kind="int8_dynamic", onnx_model=artifacts, refused="failed its accuracy gate")]
    configs = [INT8, VariantConfig(kind="fp16", atol=1, rtol=1),
               VariantConfig(kind="int8_dynamic", atol=0, rtol=0)]
    bench = bench_at_batch_1(**{ORT_DEFAULT: 10.0, variant_runtime("int8_static"): 11.0,
                                variant_runtime("fp16"): 30.0})
    static, fp16, dynamic = refuse_slower_variants(outcomes, bench, configs)
    assert static.parity is None and "not faster than the fp32 model at batch 1" in static.refused
    assert fp16.parity is parity and fp16.refused is None  # fp16: no speed gate by default
    assert dynamic.refused == "failed its accuracy gate"


def conv_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
    dense = numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "d")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
         helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
         helper.make_node("MatMul", ["f", "d"], ["logits"], name="dense"),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax")],
        "tiny_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4])], [weights, dense])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_static_int8_quantises_convolutions_keeps_softmax_float_and_tracks_fp32(tmp_path: Path) -> None:
    fp32 = conv_model(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(1)
    quantized = build_variant("int8_static", fp32, tmp_path / "int8", [rng.uniform(0, 1, (20, 3, 8, 8)).astype("f")])
    nodes = onnx.load(str(quantized)).graph.node
    ops = {node.op_type for node in nodes}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Softmax"} <= ops
    softmax = next(node for node in nodes if node.op_type == "Softmax")
    assert not any(node.op_type == "DequantizeLinear" and softmax.output[0] in node.input for node in nodes)
    x = rng.uniform(0, 1, (6, 3, 8, 8)).astype("f")
    expected = ort.InferenceSession(str(fp32)).run(None, {"x": x})[0]
    actual = ort.InferenceSession(str(quantized)).run(None, {"x": x})[0]
    assert compare_output("probs", expected, actual, 0.05, 0.1).cosine_similarity > 0.99


def test_static_int8_without_calibration_inputs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8_static needs calibration inputs"):
        build_variant("int8_static", conv_model(tmp_path / "fp32.onnx"), tmp_path / "int8")
