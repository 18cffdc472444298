import numpy as np
import pytest

from onnx_stage.parity import compare_output, generated_inputs, output_passes
from onnx_stage.records import TensorSpec


def test_identical_outputs_pass() -> None:
    x = np.random.default_rng(0).random((4, 10)).astype("float32")
    parity = compare_output("probs", x, x.copy(), atol=0, rtol=0)
    assert parity.within_tolerance and parity.max_abs == 0 and parity.argmax_agreement == 1.0


def test_error_is_measured_and_judged_with_atol_and_rtol() -> None:
    expected = np.array([[1.0, 100.0]], dtype="float32")
    actual = np.array([[1.001, 100.05]], dtype="float32")
    parity = compare_output("y", expected, actual, atol=1e-4, rtol=1e-4)
    assert parity.max_abs == pytest.approx(0.05, rel=1e-3)
    assert parity.max_rel == pytest.approx(1e-3, rel=1e-2)
    assert not parity.within_tolerance  # 1.001 vs 1.0 exceeds 1e-4 + 1e-4 * 1.0
    assert compare_output("y", expected, actual, atol=2e-3, rtol=1e-3).within_tolerance


def test_argmax_disagreement_fails_even_within_tolerance() -> None:
    expected = np.array([[0.5, 0.5000001], [0.9, 0.1]], dtype="float32")
    actual = np.array([[0.5000001, 0.5], [0.9, 0.1]], dtype="float32")
    parity = compare_output("probs", expected, actual, atol=1e-4, rtol=0)
    assert parity.within_tolerance and parity.argmax_agreement == 0.5
    assert not output_passes(parity, min_argmax_agreement=1.0)
    assert output_passes(parity, min_argmax_agreement=0.5)


def test_zero_argmax_agreement_is_not_mistaken_for_missing() -> None:
    parity = compare_output("p", np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), atol=10, rtol=0)
    assert parity.argmax_agreement == 0.0 and not output_passes(parity, 0.5)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="Keras shape"):
        compare_output("y", np.zeros((2, 3)), np.zeros((3, 2)), atol=1, rtol=1)


def test_generated_inputs_follow_specs_and_example_range() -> None:
    specs = [TensorSpec(name="x", shape=[None, 3], dtype="float32"),
             TensorSpec(name="ids", shape=[None, None], dtype="int32")]
    example = [np.array([[2.0, 3.0, 4.0]], dtype="float32"), np.array([[1, 5, 2, 0]], dtype="int32")]
    x, ids = generated_inputs(specs, 7, np.random.default_rng(0), example)
    assert x.shape == (7, 3) and x.dtype == np.float32 and 2.0 <= x.min() and x.max() <= 4.0
    assert ids.shape == (7, 4) and ids.dtype == np.int32 and 0 <= ids.min() and ids.max() <= 5


def test_summary_statistics() -> None:
    expected = np.array([[0.1, 0.2, 0.3, 0.05, 0.15, 0.1, 0.1]], dtype="float32")
    actual = expected.copy()
    actual[0, 0] += 0.01
    parity = compare_output("p", expected, actual, atol=1e-3, rtol=0)
    assert parity.fraction_out_of_tolerance == pytest.approx(1 / 7)
    assert parity.mean_abs == pytest.approx(0.01 / 7, rel=1e-3)
    assert 0.99 < parity.cosine_similarity < 1.0
    assert parity.top5_overlap == 1.0
    swapped = expected[:, ::-1].copy()
    assert compare_output("p", expected, swapped, atol=1, rtol=0).top5_overlap < 1.0


def test_tuned_options_are_dropped_when_the_full_measurement_does_not_confirm_them() -> None:
    from onnx_stage.timing import latency_stats
    from onnx_stage.tasks.benchmark import keep_tuning_only_if_faster
    from onnx_stage.records import KERAS, ORT_DEFAULT, ORT_TUNED, BenchReport

    def report(tuned_ms: float) -> BenchReport:
        rows = [latency_stats(name, 1, [ms / 1e3] * 5) for name, ms in ((KERAS, 5.0), (ORT_DEFAULT, 1.0),
                                                                        (ORT_TUNED, tuned_ms))]
        return BenchReport(rows=rows, session_options={"intra_op_num_threads": 1})

    slower = keep_tuning_only_if_faster(report(1.2))
    assert slower.session_options == {} and {r.runtime for r in slower.rows} == {KERAS, ORT_DEFAULT}
    assert slower.speedup(1) == pytest.approx(5.0)
    faster = keep_tuning_only_if_faster(report(0.5))
    assert faster.session_options and faster.speedup(1) == pytest.approx(10.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("side", ["source", "onnx", "both"])
def test_non_finite_values_fail_every_comparison(bad: float, side: str) -> None:
    from onnx_stage.parity import close_enough, cosine_at_least

    expected = np.array([[0.1, 0.7, 0.2], [0.3, 0.3, 0.4]], dtype="float32")
    actual = expected.copy()
    for array in {"source": [expected], "onnx": [actual], "both": [expected, actual]}[side]:
        array[0, 1] = bad
    parity = compare_output("probs", expected, actual, atol=1e9, rtol=1e9)  # no tolerance excuses a NaN

    assert not parity.within_tolerance and parity.fraction_out_of_tolerance == pytest.approx(1 / 6)
    assert not output_passes(parity, min_argmax_agreement=0.0)
    assert np.isnan(parity.max_abs) and np.isnan(parity.max_rel) and np.isnan(parity.cosine_similarity)
    assert not cosine_at_least(parity, -1.0)
    assert parity.argmax_agreement == 0.5  # the row holding the NaN/inf disagrees, the other agrees
    assert (parity.non_finite_source, parity.non_finite_onnx) == {
        "source": (1, 0), "onnx": (0, 1), "both": (1, 1)}[side]
    assert not close_enough(expected, actual, atol=1e9, rtol=1e9)  # np.allclose would pass inf == inf


def test_close_enough_is_the_same_rule_as_compare_output() -> None:
    from onnx_stage.parity import close_enough

    expected = np.array([1.0, 100.0], dtype="float32")
    actual = np.array([1.001, 100.05], dtype="float32")
    assert not close_enough(expected, actual, atol=1e-4, rtol=1e-4)
    assert close_enough(expected, actual, atol=2e-3, rtol=1e-3)
    assert not close_enough(expected, actual[:1], atol=1, rtol=1)  # another shape never agrees


def test_a_variant_gate_refuses_a_nan_cosine() -> None:
    from onnx_stage.config import VariantConfig
    from onnx_stage.variants import cosine_refusal, passes_gate
    from onnx_stage.records import ParityCase, ParityReport

    expected = np.array([[0.1, 0.9], [0.8, 0.2]], dtype="float32")
    actual = expected.copy()
    actual[1, 0] = np.nan
    parity = compare_output("p", expected, actual, atol=1, rtol=1)
    variant = VariantConfig(kind="fp16", atol=1, rtol=1, min_argmax_agreement=0.0, min_cosine=-1.0)
    assert not passes_gate(parity, variant)
    report = ParityReport.model_construct(cases=[ParityCase(label="generated", batch_size=2, outputs=[parity])])
    assert "cosine similarity to Keras below min_cosine" in cosine_refusal(report, variant)
