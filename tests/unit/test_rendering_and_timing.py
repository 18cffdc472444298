import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import json_format
from onnx import helper, numpy_helper

from onnx_stage.rendering import ABBREVIATION_KEY, write_renderings
from onnx_stage.timing import balanced_orders, latency_stats, time_calls, time_interleaved


def small_model() -> onnx.ModelProto:
    big = numpy_helper.from_array(np.ones((4, 300), dtype="float32"), "big_weight")
    bias = numpy_helper.from_array(np.ones((300,), dtype="float32"), "bias")
    small = numpy_helper.from_array(np.ones((3,), dtype="float32"), "small")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "big_weight"], ["h"]), helper.make_node("Add", ["h", "bias"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 300])], [big, bias, small])
    return helper.make_model(graph)


def test_json_rendering_is_json_and_says_what_it_abbreviated(tmp_path: Path) -> None:
    model = small_model()
    write_renderings(model, tmp_path / "m.json", tmp_path / "m.txt", max_tensor_elements=500)
    rendered = json.loads((tmp_path / "m.json").read_text())
    back = json_format.Parse((tmp_path / "m.json").read_text(), onnx.ModelProto())
    weights = {t.name: t for t in back.graph.initializer}
    assert list(weights["big_weight"].dims) == [4, 300] and not weights["big_weight"].raw_data
    assert "abbreviated: 1200 elements" in weights["big_weight"].doc_string
    assert weights["bias"].raw_data == model.graph.initializer[1].raw_data
    note = {p["key"]: p["value"] for p in rendered["metadataProps"]}[ABBREVIATION_KEY]
    assert "big_weight" in note and "bias" not in note
    assert "big_weight" in (tmp_path / "m.txt").read_text() and "abbreviated" in (tmp_path / "m.txt").read_text()
    assert len(model.graph.initializer[0].raw_data) == 4800  # the original is untouched


def test_no_abbreviation_note_when_everything_fits(tmp_path: Path) -> None:
    write_renderings(small_model(), tmp_path / "m.json", tmp_path / "m.txt", max_tensor_elements=10_000)
    assert "metadataProps" not in json.loads((tmp_path / "m.json").read_text())


def test_latency_stats_on_synthetic_timings() -> None:
    durations = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    stats = latency_stats("onnxruntime", 8, durations)
    assert stats.runs == 100 and len(stats.samples_ms) == 100
    assert sum(stats.histogram_ms["counts"]) == 100 and len(stats.histogram_ms["edges"]) == 41
    assert "samples_ms" not in stats.model_dump(mode="json")  # benchmark.json stays small
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p95_ms == pytest.approx(95.05) and stats.p99_ms == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.mean_ci95_ms == pytest.approx(1.96 * np.std(np.arange(1, 101), ddof=1) / 10)
    assert stats.throughput_per_s == pytest.approx(8 / np.mean(durations))


def test_confidence_interval_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    few = latency_stats("k", 1, list(rng.normal(0.010, 0.001, 50)))
    many = latency_stats("k", 1, list(rng.normal(0.010, 0.001, 5000)))
    assert many.mean_ci95_ms < few.mean_ci95_ms / 5
    assert abs(many.mean_ms - 10.0) < 3 * many.mean_ci95_ms


def test_timing_loop_honours_both_minimum_runs_and_minimum_time() -> None:
    calls = []
    assert len(time_calls(lambda: calls.append(1), warmup_runs=3, min_runs=20, min_seconds=0)) == 20
    assert len(calls) == 23
    assert len(time_calls(lambda: time.sleep(0.01), warmup_runs=0, min_runs=2, min_seconds=0.2)) >= 15


def test_interleaved_timing_alternates_contenders_and_meets_the_minimum() -> None:
    order: list[str] = []
    timings = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                               warmup_runs=1, min_runs=20, min_seconds=0, rounds=4)
    assert {len(d) for d in timings.values()} == {20}
    assert order[:2] == ["a", "b"] and order[2:7] == ["a"] * 5 and order[7:12] == ["b"] * 5


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_in_balanced_orders_each_contender_follows_every_other_equally_often(count: int) -> None:
    orders = balanced_orders(count)
    follows = Counter((before, after) for order in orders for before, after in zip(order, order[1:]))
    assert all(sorted(order) == list(range(count)) for order in orders)
    assert set(follows) == {(a, b) for a in range(count) for b in range(count) if a != b}
    assert len(set(follows.values())) == 1


def test_interleaved_timing_runs_whole_balanced_designs() -> None:
    order: list[str] = []
    time_interleaved({name: (lambda n: lambda: order.append(n))(name) for name in "abc"},
                     warmup_runs=0, min_runs=7, min_seconds=0, rounds=4)
    blocks = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert len(blocks) >= 6 * 3 - 5  # 6 rounds (one design of 3) of 3 blocks; a round may start as the last ended
    assert len(order) == 3 * 6 * 2  # ceil(7 / 6) calls a block
