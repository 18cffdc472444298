"""Graph optimisation steps (onnx_stage/graph_passes/) and their gate (onnx_stage/graph_optimize.py): each rewrite
keeps the model's outputs, removes what it says, leaves alone what it cannot prove; optimize_graph keeps a step only
if parity holds and it measures faster."""
import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_stage import graph_optimize
from onnx_stage.graph_optimize import optimize_graph, timing_cases
from onnx_stage.graph_passes.global_pooling import use_global_pooling
from onnx_stage.graph_passes.graph_index import remove_dead_nodes
from onnx_stage.graph_passes.layer_norm_fusion import fuse_layer_norm
from onnx_stage.graph_passes.loop_simplification import simplify_loops
from onnx_stage.graph_passes.neutral_elementwise import remove_neutral_elementwise
from onnx_stage.graph_passes.recurrent_fusion import fuse_recurrent_loops
from onnx_stage.graph_passes.shape_simplification import (drop_squeeze_pairs, simplify_shapes,
                                                          sink_transposes_into_reductions)

RNG = np.random.default_rng(0)


def _model(nodes: list, inputs: list, outputs: list, initializers: dict[str, np.ndarray], opset: int = 17,
           ) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(value, name) for name, value in initializers.items()])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def _float(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_neutral_elementwise_drops_zero_bias_and_identity_but_not_a_broadcasting_zero() -> None:
    nodes = [helper.make_node("Identity", ["x"], ["x_named"]),
             helper.make_node("Add", ["x_named", "zeros"], ["biased"]),  # x + 0: gone
             helper.make_node("Mul", ["ones", "biased"], ["scaled"]),  # 1 * x: gone
             helper.make_node("Add", ["scaled", "wide_zeros"], ["wide"]),  # broadcasts [b, 4] to [3, b, 4]: kept
             helper.make_node("Relu", ["wide"], ["relu"]),
             helper.make_node("Identity", ["relu"], ["y"])]  # names the graph output: Relu writes y itself
    model = _model(nodes, [_float("x", ["batch", 4])], [_float("y", [3, "batch", 4])],
                   {"zeros": np.zeros(4, np.float32), "ones": np.ones((1, 4), np.float32),
                    "wide_zeros": np.zeros((3, 1, 4), np.float32)})
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    expected = _run(model, {"x": x})

    assert remove_neutral_elementwise(model) == 4
    onnx.checker.check_model(model)
    assert _ops(model) == ["Add", "Relu"]
    assert model.graph.node[1].output[0] == "y"
    np.testing.assert_array_equal(_run(model, {"x": x})[0], expected[0])


def test_shape_simplification_folds_computed_reshape_targets_and_size_one_transposes() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),  # Reshape(x, [shape[0], 12]): the Tensordot pattern
             helper.make_node("Gather", ["shape", "zero"], ["rows"]),
             helper.make_node("Concat", ["rows", "twelve"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("Reshape", ["flat", "nchw"], ["pooled"]),  # [b, 12] → [b, 12, 1, 1]
             helper.make_node("Transpose", ["pooled"], ["nhwc"], perm=[0, 2, 3, 1]),  # moves only 1s: a Reshape
             helper.make_node("Reshape", ["nhwc", "nchw"], ["y"])]  # back to its own shape
    model = _model(nodes, [_float("x", ["batch", 3, 4])], [_float("y", ["batch", 12, 1, 1])],
                   {"zero": np.array([0], np.int64), "twelve": np.array([12], np.int64),
                    "nchw": np.array([-1, 12, 1, 1], np.int64)})
    x = RNG.standard_normal((5, 3, 4)).astype(np.float32)
    expected = _run(model, {"x": x})

    assert simplify_shapes(model) > 0
    onnx.checker.check_model(model)
    assert "Shape" not in _ops(model) and "Transpose" not in _ops(model)
    assert _ops(model).count("Reshape") == 1
    for batch in (1, 5):
        x = RNG.standard_normal((batch, 3, 4)).astype(np.float32)
        np.testing.assert_array_equal(_run(model, {"x": x})[0], x.reshape(batch, 12, 1, 1))
    np.testing.assert_array_equal(_run(model, {"x": np.asarray(x)})[0].shape, expected[0].shape[:0] + (5, 12, 1, 1))


def test_shape_simplification_leaves_a_transpose_that_moves_data() -> None:
    model = _model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])], [_float("x", ["batch", 3, 4])],
                   [_float("y", ["batch", 4, 3])], {})
    assert simplify_shapes(model) == 0
    assert _ops(model) == ["Transpose"]


def _tf2onnx_layer_norm(gamma: np.ndarray | None, beta: np.ndarray | None) -> onnx.ModelProto:
    """tf.nn.batch_normalization over moments(axis=-1), as tf2onnx writes Keras 3's LayerNormalization."""
    scale = "r"
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["mean"]),
             helper.make_node("Sub", ["x", "mean"], ["diff"]),
             helper.make_node("Mul", ["diff", "diff"], ["square"]),
             helper.make_node("GlobalAveragePool", ["square"], ["var"]),
             helper.make_node("Add", ["var", "eps"], ["var_eps"]),
             helper.make_node("Sqrt", ["var_eps"], ["std"]),
             helper.make_node("Reciprocal", ["std"], ["r"])]
    initializers = {"eps": np.array(1e-3, np.float32)}
    if gamma is not None:
        nodes.append(helper.make_node("Mul", ["r", "gamma"], ["s"]))
        initializers["gamma"], scale = gamma, "s"
    nodes += [helper.make_node("Neg", ["mean"], ["neg_mean"]),
              helper.make_node("Mul", ["neg_mean", scale], ["shift"])]
    if beta is not None:
        nodes.append(helper.make_node("Add", ["shift", "beta"], ["offset"]))
        initializers["beta"] = beta
    nodes += [helper.make_node("Mul", ["x", scale], ["scaled"]),
              helper.make_node("Add", ["scaled", "offset" if beta is not None else "shift"], ["y"])]
    return _model(nodes, [_float("x", ["batch", 5, 16])], [_float("y", ["batch", 5, 16])], initializers)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_fusion_gives_one_layer_normalization_with_the_same_outputs(affine: bool) -> None:
    gamma = RNG.standard_normal((1, 1, 16)).astype(np.float32) if affine else None
    beta = RNG.standard_normal((1, 1, 16)).astype(np.float32) if affine else None
    model = _tf2onnx_layer_norm(gamma, beta)
    x = (RNG.standard_normal((3, 5, 16)) * 4 + 2).astype(np.float32)
    expected = _run(model, {"x": x})[0]

    assert fuse_layer_norm(model) == 1
    onnx.checker.check_model(model)
    assert _ops(model) == ["LayerNormalization"]
    np.testing.assert_allclose(_run(model, {"x": x})[0], expected, atol=1e-5, rtol=1e-4)


def test_layer_norm_fusion_needs_opset_17_and_the_last_axis() -> None:
    old = _tf2onnx_layer_norm(None, None)
    old.opset_import[0].version = 16
    assert fuse_layer_norm(old) == 0
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["mean"]),  # rank 4: a mean over two axes, not LayerNorm
             helper.make_node("Sub", ["x", "mean"], ["diff"]), helper.make_node("Mul", ["diff", "diff"], ["square"]),
             helper.make_node("GlobalAveragePool", ["square"], ["var"]), helper.make_node("Add", ["var", "eps"], ["v"]),
             helper.make_node("Sqrt", ["v"], ["std"]), helper.make_node("Reciprocal", ["std"], ["r"]),
             helper.make_node("Neg", ["mean"], ["m"]), helper.make_node("Mul", ["m", "r"], ["shift"]),
             helper.make_node("Mul", ["x", "r"], ["scaled"]), helper.make_node("Add", ["scaled", "shift"], ["y"])]
    four_d = _model(nodes, [_float("x", ["batch", 2, 5, 16])], [_float("y", ["batch", 2, 5, 16])],
                    {"eps": np.array(1e-3, np.float32)})
    assert fuse_layer_norm(four_d) == 0


def _zero_bias_model(path: Path) -> Path:
    model = _model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
                   [_float("x", ["batch", 8])], [_float("y", ["batch", 8])],
                   {"w": RNG.standard_normal((8, 8)).astype(np.float32), "b": np.zeros(8, np.float32)})
    onnx.save(model, str(path))
    return path


def _cases() -> list[list[np.ndarray]]:
    return [[RNG.standard_normal((batch, 8)).astype(np.float32)] for batch in (1, 16)]


def test_optimize_graph_keeps_a_step_that_holds_parity_and_is_faster(tmp_path: Path, monkeypatch) -> None:
    path = _zero_bias_model(tmp_path / "model.onnx")
    monkeypatch.setattr(graph_optimize, "speed_ratio", lambda *args: 0.9)

    optimized = optimize_graph(path, ["neutral_elementwise", "shape_simplification"], _cases(), 0.1)
    kept, refused = optimized.kept, optimized.refused

    assert kept == ["neutral_elementwise(1)"]
    assert refused == {"shape_simplification": "nothing to rewrite"}
    assert _ops(onnx.load(str(path))) == ["MatMul"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_optimize_graph_refuses_a_step_measured_slower(tmp_path: Path, monkeypatch) -> None:
    path = _zero_bias_model(tmp_path / "model.onnx")
    original = path.read_bytes()
    monkeypatch.setattr(graph_optimize, "speed_ratio", lambda *args: 1.02)

    optimized = optimize_graph(path, ["neutral_elementwise"], _cases(), 0.1)
    kept, refused = optimized.kept, optimized.refused

    assert kept == [] and refused["neutral_elementwise"].startswith("not faster (1.020x")
    assert path.read_bytes() == original


def test_without_a_timing_budget_a_step_that_holds_parity_is_kept_untimed(tmp_path: Path, monkeypatch) -> None:
    path = _zero_bias_model(tmp_path / "model.onnx")

    def never_timed(*args: object) -> float:
        raise AssertionError("speed_ratio called with graph_optimization_seconds = 0")
    monkeypatch.setattr(graph_optimize, "speed_ratio", never_timed)

    optimized = optimize_graph(path, ["neutral_elementwise"], _cases(), 0)
    kept, refused = optimized.kept, optimized.refused

    assert kept == ["neutral_elementwise(1)"] and refused == {}


def test_optimize_graph_refuses_a_step_that_changes_outputs(tmp_path: Path, monkeypatch) -> None:
    path = _zero_bias_model(tmp_path / "model.onnx")

    def breaks_the_model(model: onnx.ModelProto) -> int:
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((8, 8), np.float32), "w"))
        return 1
    monkeypatch.setitem(graph_optimize.PASSES, "neutral_elementwise", breaks_the_model)
    monkeypatch.setattr(graph_optimize, "speed_ratio", lambda *args: 0.5)

    optimized = optimize_graph(path, ["neutral_elementwise"], _cases(), 0.1)
    kept, refused = optimized.kept, optimized.refused

    assert kept == [] and refused["neutral_elementwise"].startswith("changes output 'y'")


def test_untimed_steps_are_checked_together_once_and_one_by_one_only_when_that_fails(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    path = _zero_bias_model(tmp_path / "model.onnx")
    sessions: list[str] = []
    opened = graph_optimize.open_session
    monkeypatch.setattr(graph_optimize, "open_session", lambda p: sessions.append(Path(p).name) or opened(p))

    optimized = optimize_graph(path, ["neutral_elementwise", "shape_simplification"], _cases(), 0)
    kept, refused = optimized.kept, optimized.refused

    assert kept == ["neutral_elementwise(1)"] and refused == {"shape_simplification": "nothing to rewrite"}
    assert sessions == ["model.onnx", "combined.onnx"]  # the unoptimised model, then every kept step at once

    def breaks_the_model(model: onnx.ModelProto) -> int:
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((8, 8), np.float32), "w"))
        return 1
    path = _zero_bias_model(tmp_path / "again.onnx")
    monkeypatch.setitem(graph_optimize.PASSES, "global_pooling", breaks_the_model)
    sessions.clear()

    optimized = optimize_graph(path, ["neutral_elementwise", "global_pooling"], _cases(), 0)
    kept, refused = optimized.kept, optimized.refused

    assert kept == ["neutral_elementwise(1)"] and refused["global_pooling"].startswith("changes output 'y'")
    assert sessions == ["again.onnx", "combined.onnx", "neutral_elementwise.onnx", "global_pooling.onnx"]
    optimized = onnx.load(str(path))
    assert _ops(optimized) == ["MatMul"]  # the good step's model, not the broken one
    assert not np.all(numpy_helper.to_array(optimized.graph.initializer[0]) == 1)


def test_timing_cases_are_the_smallest_and_largest_batch_up_to_32() -> None:
    cases = [[np.zeros((n, 2))] for n in (1, 256, 16, 1)]
    assert [len(c[0]) for c in timing_cases(cases)] == [1, 16]
    assert [len(c[0]) for c in timing_cases([[np.zeros((4, 2))]])] == [4]


def _tf2onnx_rnn_loop(steps: int = 4, bound: int = 4) -> onnx.ModelProto:
    """A SimpleRNN as tf2onnx writes Keras 3's while loop: the weights carried through every iteration, a step
    counter carried next to the iteration number, condition `counter + 1 < bound and iteration < bound`."""
    body = helper.make_graph(
        [helper.make_node("Gather", ["seq", "counter"], ["x_t"]),
         helper.make_node("MatMul", ["x_t", "w_in"], ["xw"]),
         helper.make_node("Squeeze", ["bias2d", "axis0"], ["bias"]),  # reads only constants: hoisted
         helper.make_node("Add", ["xw", "bias"], ["xb"]),
         helper.make_node("MatMul", ["h", "w_rec"], ["hw"]),
         helper.make_node("Add", ["xb", "hw"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h_next"]),
         helper.make_node("Identity", ["h_next"], ["h_scan"]),
         helper.make_node("Add", ["counter", "one"], ["counter_next"]),
         helper.make_node("Cast", ["counter_next"], ["counter_f"], to=TensorProto.FLOAT),
         helper.make_node("Less", ["counter_f", "bound_f"], ["more_steps"]),
         helper.make_node("Cast", ["iteration"], ["iteration_f"], to=TensorProto.FLOAT),
         helper.make_node("Less", ["iteration_f", "bound_f"], ["more_iterations"]),
         helper.make_node("And", ["more_steps", "more_iterations"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("counter", TensorProto.INT64, []),
         _float("h", ["batch", 3]), _float("w_in", [2, 3]), _float("w_rec", [3, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("counter_next", TensorProto.INT64, []), _float("h_next", ["batch", 3]),
         _float("w_in", [2, 3]), _float("w_rec", [3, 3]), _float("h_scan", ["batch", 3])],
        [numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array(bound, np.float32),
                                                                                       "bound_f"),
         numpy_helper.from_array(np.array([0], np.int64), "axis0"),
         numpy_helper.from_array(RNG.standard_normal((1, 3)).astype(np.float32), "bias2d")])
    nodes = [helper.make_node("Transpose", ["x"], ["seq"], perm=[1, 0, 2]),
             helper.make_node("Loop", ["trip_count", "true", "zero", "h0", "kernel", "recurrent_kernel"],
                              ["counter_final", "h_final", "kernel_out", "recurrent_out", "scan"], body=body),
             helper.make_node("Transpose", ["scan"], ["sequence"], perm=[1, 0, 2])]
    graph_inputs = [_float("x", ["batch", steps, 2]), _float("h0", ["batch", 3])]
    return _model(nodes, graph_inputs, [_float("sequence", ["batch", steps, 3]), _float("h_final", ["batch", 3])],
                  {"trip_count": np.array(steps, np.int64), "true": np.array(True), "zero": np.array(0, np.int64),
                   "kernel": RNG.standard_normal((2, 3)).astype(np.float32),
                   "recurrent_kernel": RNG.standard_normal((3, 3)).astype(np.float32)})


def test_loop_simplification_keeps_outputs_and_leaves_only_the_cell_in_the_body() -> None:
    model = _tf2onnx_rnn_loop()
    feed = {"x": RNG.standard_normal((2, 4, 2)).astype(np.float32), "h0": RNG.standard_normal((2, 3)).astype(np.float32)}
    expected = _run(model, feed)

    assert simplify_loops(model) == 5  # 2 carried weights, 1 hoisted, 1 projection, 1 condition
    onnx.checker.check_model(model)
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    assert len(loop.input) == 4 and len(loop.output) == 3  # the weights are read from outside
    assert sorted(n.op_type for n in loop.attribute[0].g.node) == ["Add", "Add", "Gather", "Identity", "MatMul", "Tanh"]
    for got, want in zip(_run(model, feed), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


def test_loop_condition_that_can_end_the_loop_early_is_kept() -> None:
    model = _tf2onnx_rnn_loop(steps=4, bound=3)  # stops after 3 steps: the condition matters
    assert simplify_loops(model) == 4
    body = next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g
    assert "And" in [n.op_type for n in body.node]


def test_a_transpose_before_a_pooling_head_sinks_into_the_reduction() -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["nhwc", "scale"], ["scaled"]),  # BatchNorm's scale, per channel (last axis)
             helper.make_node("Clip", ["scaled", "zero", "six"], ["relu6"]),
             helper.make_node("ReduceMean", ["relu6"], ["y"], axes=[1, 2], keepdims=0)]
    model = _model(nodes, [_float("x", ["batch", 4, 3, 3])], [_float("y", ["batch", 4])],
                   {"scale": RNG.standard_normal(4).astype(np.float32), "zero": np.array(0, np.float32),
                    "six": np.array(6, np.float32)})
    x = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32) * 5
    expected = _run(model, {"x": x})[0]

    assert sink_transposes_into_reductions(model) == 1
    remove_dead_nodes(model)
    onnx.checker.check_model(model)
    assert _ops(model) == ["Mul", "Clip", "ReduceMean"]
    np.testing.assert_allclose(_run(model, {"x": x})[0], expected, atol=1e-6)


def test_a_transpose_whose_kept_axes_change_order_is_not_sunk() -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("ReduceSum", ["t", "axes"], ["y"], keepdims=0)]
    model = _model(nodes, [_float("x", [2, 3, 4])], [_float("y", [4, 3])], {"axes": np.array([0], np.int64)})
    assert sink_transposes_into_reductions(model) == 0


@pytest.mark.parametrize("keepdims", [1, 0])
def test_a_spatial_mean_becomes_global_average_pooling(keepdims: int) -> None:
    model = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=keepdims)],
                   [_float("x", ["batch", 4, 5, 6])], [_float("y", ["batch", 4, 1, 1] if keepdims else ["batch", 4])], {})
    x = RNG.standard_normal((2, 4, 5, 6)).astype(np.float32)
    expected = _run(model, {"x": x})[0]

    assert use_global_pooling(model) == 1
    onnx.checker.check_model(model)
    assert _ops(model) == (["GlobalAveragePool"] if keepdims else ["GlobalAveragePool", "Flatten"])
    np.testing.assert_allclose(_run(model, {"x": x})[0], expected, atol=1e-6)
    not_spatial = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2], keepdims=1)],
                         [_float("x", ["batch", 4, 5, 6])], [_float("y", ["batch", 1, 1, 6])], {})
    assert use_global_pooling(not_spatial) == 0


def test_recurrent_fusion_turns_a_simple_rnn_loop_into_one_rnn_node() -> None:
    model = _tf2onnx_rnn_loop()
    body = next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g
    identity = next(n for n in body.node if n.op_type == "Identity")  # as tf2onnx: the carried state copies the scan
    identity.input[0], identity.output[0] = "h_scan_value", "h_next"
    next(n for n in body.node if n.op_type == "Tanh").output[0] = "h_scan_value"
    body.output[5].name = "h_scan_value"
    onnx.checker.check_model(model)
    feed = {"x": RNG.standard_normal((3, 4, 2)).astype(np.float32), "h0": RNG.standard_normal((3, 3)).astype(np.float32)}
    expected = _run(model, feed)

    assert fuse_recurrent_loops(model) == 1
    onnx.checker.check_model(model)
    assert "Loop" not in _ops(model) and "RNN" in _ops(model)
    for got, want in zip(_run(model, feed), expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_recurrent_fusion_leaves_a_loop_that_stops_early() -> None:
    model = _tf2onnx_rnn_loop(steps=4, bound=3)
    assert fuse_recurrent_loops(model) == 0
    assert "Loop" in _ops(model)


def test_a_squeeze_unsqueeze_pair_around_an_activation_goes_and_a_zero_gemm_bias_too() -> None:
    nodes = [helper.make_node("Squeeze", ["x", "axis2"], ["squeezed"]),  # tf2onnx's Conv1D: [N, C, 1, L] → [N, C, L]
             helper.make_node("Relu", ["squeezed"], ["relu"]),
             helper.make_node("Unsqueeze", ["relu", "axis2"], ["y"])]
    model = _model(nodes, [_float("x", ["batch", 3, 1, 5])], [_float("y", ["batch", 3, 1, 5])],
                   {"axis2": np.array([2], np.int64)})
    x = RNG.standard_normal((2, 3, 1, 5)).astype(np.float32)
    assert drop_squeeze_pairs(model) == 0  # the Unsqueeze names a graph output: kept as it is
    nodes.append(helper.make_node("Neg", ["y"], ["z"]))
    model = _model(nodes, [_float("x", ["batch", 3, 1, 5])], [_float("z", ["batch", 3, 1, 5])],
                   {"axis2": np.array([2], np.int64)})
    assert drop_squeeze_pairs(model) == 1
    remove_dead_nodes(model)
    onnx.checker.check_model(model)
    assert _ops(model) == ["Relu", "Neg"]
    np.testing.assert_array_equal(_run(model, {"x": x})[0], -np.maximum(x, 0))

    gemm = _model([helper.make_node("Gemm", ["a", "w", "c"], ["y"])], [_float("a", ["batch", 4])],
                  [_float("y", ["batch", 2])], {"w": np.ones((4, 2), np.float32), "c": np.zeros(2, np.float32)})
    assert remove_neutral_elementwise(gemm) == 1 and list(gemm.graph.node[0].input) == ["a", "w"]


def test_recurrent_fusion_also_takes_the_scan_output_as_a_copy_of_the_state() -> None:
    model = _tf2onnx_rnn_loop()  # h_scan = Identity(h_next): the other order tf2onnx writes
    feed = {"x": RNG.standard_normal((2, 4, 2)).astype(np.float32), "h0": RNG.standard_normal((2, 3)).astype(np.float32)}
    expected = _run(model, feed)
    assert fuse_recurrent_loops(model) == 1
    for got, want in zip(_run(model, feed), expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_two_loops_with_the_same_body_names_are_both_simplified_and_fused() -> None:
    model = _tf2onnx_rnn_loop()  # a Bidirectional layer's two directions: sibling loops, same names inside
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    twin = copy.deepcopy(loop)
    twin.output[:] = [f"{name}_2" for name in loop.output]
    model.graph.node.append(twin)
    model.graph.node.append(helper.make_node("Add", ["h_final", "h_final_2"], ["both"]))
    model.graph.output.append(_float("both", ["batch", 3]))
    onnx.checker.check_model(model)
    feed = {"x": RNG.standard_normal((2, 4, 2)).astype(np.float32), "h0": RNG.standard_normal((2, 3)).astype(np.float32)}
    expected = _run(model, feed)

    assert fuse_recurrent_loops(model) == 2
    onnx.checker.check_model(model)
    for got, want in zip(_run(model, feed), expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_shapes_are_inferred_from_weight_shapes_alone_as_from_the_whole_model() -> None:
    """Graph infers shapes on the model without its large initializers' data (a 14 MB model serialised per pass
    was most of a pass's time): the shapes, data propagation through a small Reshape target included, are the same."""
    from onnx_stage.graph_passes.graph_index import DATA_PROPAGATION_MAX_ELEMENTS, Graph
    weight = RNG.standard_normal((64, DATA_PROPAGATION_MAX_ELEMENTS // 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Shape", ["y"], ["y_shape"]),
             helper.make_node("Gather", ["y_shape", "first"], ["batch"], axis=0),
             helper.make_node("Concat", ["batch", "split"], ["target"], axis=0),
             helper.make_node("Reshape", ["y", "target"], ["z"]),
             helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(4, np.float32))),
             helper.make_node("Mul", ["z", "c"], ["out"])]
    model = _model(nodes, [_float("x", ["batch", 64])], [_float("out", ["batch", DATA_PROPAGATION_MAX_ELEMENTS // 32, 4])],
                   {"w": weight, "first": np.array([0], np.int64), "split": np.array([DATA_PROPAGATION_MAX_ELEMENTS // 32, 4], np.int64)})
    full = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    expected = {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
                for i in (*full.input, *full.value_info, *full.output) if i.type.tensor_type.HasField("shape")}
    shapes = Graph(model).shapes
    assert shapes == expected
    assert shapes["z"] == [None, DATA_PROPAGATION_MAX_ELEMENTS // 32, 4] and "w" not in shapes
    assert len(model.graph.initializer) == 3  # the model itself is not changed


@pytest.mark.parametrize("scenario", ["kept together", "refused as slower", "one by one after a broken step"])
def test_the_outputs_returned_are_the_kept_models_own(tmp_path: Path, monkeypatch, scenario: str) -> None:
    """Validation uses optimize_graph's outputs instead of running the file again: they must be those of the file
    optimize_graph leaves, whichever way it got there (a step here changes the rounding, so they differ)."""
    path, cases = _zero_bias_model(tmp_path / "model.onnx"), _cases()

    def nudges_the_weights(model: onnx.ModelProto) -> int:
        weights = numpy_helper.to_array(model.graph.initializer[0]) * np.float32(1 + 2 ** -20)
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, "w"))
        return 1

    def breaks_the_model(model: onnx.ModelProto) -> int:
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((8, 8), np.float32), "w"))
        return 1
    monkeypatch.setitem(graph_optimize.PASSES, "neutral_elementwise", nudges_the_weights)
    monkeypatch.setitem(graph_optimize.PASSES, "global_pooling", breaks_the_model)
    monkeypatch.setattr(graph_optimize, "speed_ratio", lambda *args: 1.5 if scenario == "refused as slower" else 0.5)
    unoptimised = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    before = [unoptimised.run(None, {"x": arrays[0]})[0] for arrays in cases]

    optimized = optimize_graph(path, ["neutral_elementwise"] + (["global_pooling"] if "broken" in scenario else []),
                               cases, 0.1 if scenario == "refused as slower" else 0)

    assert optimized.kept == ([] if scenario == "refused as slower" else ["neutral_elementwise(1)"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    after = [session.run(None, {"x": arrays[0]})[0] for arrays in cases]
    assert len(optimized.outputs) == len(cases)
    for returned, expected in zip(optimized.outputs, after):
        np.testing.assert_array_equal(returned[0], expected)
    assert (scenario == "refused as slower") == all(np.array_equal(a, b) for a, b in zip(before, after))
