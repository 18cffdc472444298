"""The `layer_norm_fusion` step: TensorFlow's layer normalisation as tf2onnx writes it (moments: mean, squared
difference, variance, Rsqrt as Sqrt + Reciprocal, scale and shift) over the last axis becomes one ONNX
LayerNormalization (opset 17 or later: a standard op, with kernels on onnxruntime's CPU and CUDA providers).
"""
from __future__ import annotations

from itertools import permutations

import numpy as np
import onnx
from onnx import helper

from onnx_stage.graph_passes.graph_index import Graph, remove_dead_nodes, toposort


def _reduces_last_axis(index: Graph, node: onnx.NodeProto | None, x: str) -> bool:
    """node is a mean over x's last axis, dimensions kept: GlobalAveragePool of a rank-3 x, or ReduceMean."""
    rank = len(index.shapes.get(x) or [])
    if node is None or node.input[0] != x or rank < 2:
        return False
    if node.op_type == "GlobalAveragePool":
        return rank == 3
    if node.op_type != "ReduceMean" or any(a.name == "keepdims" and a.i == 0 for a in node.attribute):
        return False
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and (constant := index.const(node.input[1])) is not None:
        axes = constant.tolist()
    return axes is not None and [a % rank for a in axes] == [rank - 1]


def _match_layer_norm(index: Graph, add: onnx.NodeProto) -> tuple[str, np.ndarray | None, np.ndarray | None, float] | None:
    """(x, gamma, beta, epsilon) when add = x * s + (beta - mean * s), s = gamma / sqrt(var + eps), mean and var
    over x's last axis, as tf2onnx writes tf.nn.batch_normalization over moments; None otherwise."""
    for scaled_name, shift_name in permutations(add.input):
        scaled = index.made_by(scaled_name, "Mul")
        for x, s in permutations(scaled.input) if scaled is not None else ():
            gamma, r = None, s
            if (gamma_mul := index.made_by(s, "Mul")) is not None:
                for r_name, g_name in permutations(gamma_mul.input):
                    if index.made_by(r_name, "Reciprocal") is not None and index.const(g_name) is not None:
                        r, gamma = r_name, index.const(g_name)
            reciprocal = index.made_by(r, "Reciprocal")
            sqrt = index.made_by(reciprocal.input[0], "Sqrt") if reciprocal is not None else None
            plus_eps = index.made_by(sqrt.input[0], "Add") if sqrt is not None else None
            if plus_eps is None:
                continue
            for var_name, eps_name in permutations(plus_eps.input):
                eps = index.const(eps_name)
                variance = index.producer.get(var_name)
                if eps is None or eps.size != 1 or variance is None:
                    continue
                square = index.made_by(variance.input[0], "Mul")
                diff = index.made_by(square.input[0], "Sub") if square is not None else None
                if diff is None or square.input[0] != square.input[1] or diff.input[0] != x:
                    continue
                mean = diff.input[1]
                if not (_reduces_last_axis(index, index.producer.get(mean), x)
                        and _reduces_last_axis(index, variance, square.output[0])):
                    continue
                beta = _layer_norm_shift(index, shift_name, mean, s)
                if beta is not False:
                    return x, gamma, beta, float(eps.reshape(()))
    return None


def _layer_norm_shift(index: Graph, name: str, mean: str, s: str) -> np.ndarray | None | bool:
    """beta when name = beta + (-mean) * s (or -mean * s alone: None); False when it is neither."""
    def is_neg_mean_times_s(candidate: str) -> bool:
        mul = index.made_by(candidate, "Mul")
        return mul is not None and any(
            (neg := index.made_by(a, "Neg")) is not None and neg.input[0] == mean and b == s
            for a, b in permutations(mul.input))
    if is_neg_mean_times_s(name):
        return None
    if (add := index.made_by(name, "Add")) is not None:
        for product, beta in permutations(add.input):
            if is_neg_mean_times_s(product) and index.const(beta) is not None:
                return index.const(beta)
    return False


def fuse_layer_norm(model: onnx.ModelProto) -> int:
    """Replace tf2onnx's layer-normalisation subgraphs over the last axis with ONNX LayerNormalization (needs
    opset ≥ 17; float32 gamma/beta of the last axis' size, any leading size-1 dimensions). Returns the fusions."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        return 0
    index, fusions = Graph(model), 0
    for position, node in enumerate(list(model.graph.node)):
        match = _match_layer_norm(index, node) if node.op_type == "Add" else None
        if match is None:
            continue
        x, gamma, beta, epsilon = match
        size = (index.shapes.get(x) or [None])[-1]
        params = [p for p in (gamma, beta) if p is not None]
        if size is None or any(p.dtype != np.float32 or p.size != size for p in params):
            continue
        scale = index.add_constant("ln_scale", (gamma if gamma is not None else np.ones(size, np.float32)).reshape(size))
        bias = index.add_constant("ln_bias", (beta if beta is not None else np.zeros(size, np.float32)).reshape(size))
        fused = helper.make_node("LayerNormalization", [x, scale, bias], [node.output[0]], axis=-1, epsilon=epsilon,
                                 name=f"{node.name or node.output[0]}/LayerNormalization")
        model.graph.node.remove(node)
        model.graph.node.insert(list(model.graph.node).index(index.producer[x]) + 1 if x in index.producer
                                else 0, fused)
        index.producer[node.output[0]] = fused
        fusions += 1
    toposort(model.graph)
    remove_dead_nodes(model)
    return fusions
