"""The `neutral_elementwise` step: drops `x + 0`, `x - 0`, `x * 1`, `x / 1` with constant zeros/ones that do not
broadcast `x` to a bigger shape (the lean route attaches weights after conversion, so a zero bias stays an Add that
plain tf2onnx's frozen graph folds away), and Identity nodes (input naming, output naming).
"""
from __future__ import annotations

import numpy as np
import onnx

from onnx_stage.graph_passes.graph_index import Dim, Graph, remove_dead_nodes, used_names


def _broadcasts_into(constant: np.ndarray, shape: list[Dim] | None) -> bool:
    """Whether `x op constant` has x's shape: the constant's dimensions, aligned right, are 1 or x's (known) size."""
    if shape is None or constant.ndim > len(shape):
        return False
    return all(c == 1 or c == s for c, s in zip(constant.shape[::-1], shape[::-1]))


def remove_neutral_elementwise(model: onnx.ModelProto) -> int:
    """Drop `x + 0`, `0 + x`, `x - 0`, `x * 1`, `1 * x`, `x / 1` (float constants that leave x's shape as it is),
    Identity nodes (see _drop for graph outputs) and a Gemm's all-zero C. Returns the number of rewrites."""
    index, rewrites = Graph(model), 0
    neutral = {"Add": (0.0, (0, 1)), "Sub": (0.0, (1,)), "Mul": (1.0, (0, 1)), "Div": (1.0, (1,))}
    for node in list(model.graph.node):
        if node.op_type == "Identity":
            rewrites += _drop(index, node, node.input[0])
            continue
        if node.op_type == "Gemm" and len(node.input) == 3 and (bias := index.const(node.input[2])) is not None \
                and bias.size and not np.any(bias):
            del node.input[2]  # C = 0: the product alone
            rewrites += 1
            continue
        if node.op_type not in neutral or len(node.input) != 2:
            continue
        value, positions = neutral[node.op_type]
        for position in positions:
            constant, other = index.const(node.input[position]), node.input[1 - position]
            if (constant is not None and constant.dtype.kind == "f" and constant.size and np.all(constant == value)
                    and _broadcasts_into(constant, index.shapes.get(other)) and _drop(index, node, other)):
                rewrites += 1
                break
    remove_dead_nodes(model)
    return rewrites


def _drop(index: Graph, node: onnx.NodeProto, kept: str) -> bool:
    """Remove a node that computes its input `kept` unchanged: its consumers read `kept`; when its output is a
    graph output, the node producing `kept` writes that name itself (if nothing else reads `kept`)."""
    if index.bypass(node, kept):
        return True
    target, producer = node.output[0], index.producer.get(kept)
    in_subgraphs = {name for n in index.graph.node for a in n.attribute
                    for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)) for name in used_names(g)}
    if producer is None or kept in index.outputs or kept in in_subgraphs or \
            sum(list(n.input).count(kept) for n in index.graph.node) != 1:
        return False
    producer.output[list(producer.output).index(kept)] = target
    index.producer[target] = producer
    index.graph.node.remove(node)
    return True
