"""The `global_pooling` step: a ReduceMean over every axis after the first two becomes GlobalAveragePool (its own
kernel, also in onnxruntime's blocked NCHWc layout).
"""
from __future__ import annotations

import onnx
from onnx import helper

from onnx_stage.graph_passes.graph_index import Graph, reduction_axes


def use_global_pooling(model: onnx.ModelProto) -> int:
    """ReduceMean over every axis after the first two of a tensor of known rank ≥ 3 (Keras' global average pooling
    and squeeze-excite, once in NCHW) → GlobalAveragePool (+ Flatten when dimensions are not kept): the same mean,
    and onnxruntime runs GlobalAveragePool in its blocked convolution layout instead of converting out of it and
    back around every squeeze-excite block. Returns the reductions replaced."""
    index, rewrites = Graph(model), 0
    for position, node in enumerate(list(model.graph.node)):
        rank = len(index.shapes.get(node.input[0]) or []) if node.op_type == "ReduceMean" else 0
        axes = reduction_axes(index, node) if rank >= 3 else None
        if axes is None or sorted(a % rank for a in axes) != list(range(2, rank)):
            continue
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        output = node.output[0]
        pooled = helper.make_node("GlobalAveragePool", [node.input[0]], [output if keepdims else f"{output}/pooled"],
                                  name=f"{node.name or output}/GlobalAveragePool")
        replacement = [pooled] if keepdims else [pooled, helper.make_node("Flatten", [pooled.output[0]], [output],
                                                                           axis=1, name=f"{node.name or output}/Flatten")]
        index_in_graph = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new_node in enumerate(replacement):
            model.graph.node.insert(index_in_graph + offset, new_node)
        rewrites += 1
    return rewrites
