"""The graph helpers every rewrite step uses: the index of a model's main graph (producers, readers, constants,
inferred shapes), renaming a value's uses, dead-node removal, topological order, subgraphs, constant folding.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

Dim = int | None  # a known size, or None (symbolic/unknown)


# Initializers up to this many elements keep their values for shape inference: shape vectors, axes, Reshape targets
DATA_PROPAGATION_MAX_ELEMENTS = 1024


def _without_weight_data(model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    """The model with each larger initializer replaced by a graph input of its type and shape (what shape inference,
    data propagation included, reads of it), and those initializers' names. onnx.shape_inference serialises the
    model it is given: inferring on the weights themselves cost ~25 ms a pass on MobileNetV2's 14 MB, six passes."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    del light.graph.initializer[:]
    already_inputs, moved = {i.name for i in model.graph.input}, set()
    for tensor in model.graph.initializer:
        if np.prod(tensor.dims, dtype=np.int64) <= DATA_PROPAGATION_MAX_ELEMENTS:
            light.graph.initializer.append(tensor)
        elif tensor.name not in already_inputs:
            light.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
            moved.add(tensor.name)
    return light, moved


class Graph:
    """Index of one model's main graph: producers, consumers (subgraphs' outer-scope references included),
    constants and the shapes ONNX shape inference gives (with data propagation: Shape → Gather → Concat chains)."""

    def __init__(self, model: onnx.ModelProto, shapes: bool = True) -> None:
        self.model, self.graph = model, model.graph
        self.constants = {t.name: t for t in self.graph.initializer}
        self.constants |= {n.output[0]: n.attribute[0].t for n in self.graph.node
                           if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}  # main-graph nodes reading each name, as built
        for node in self.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}
        self.shapes: dict[str, list[Dim]] = {}
        if shapes:
            try:
                light, weights = _without_weight_data(model)
                inferred = onnx.shape_inference.infer_shapes(light, data_prop=True).graph
            except Exception:  # noqa: BLE001 -- a model onnx cannot infer is left as it is by shape-based rewrites
                inferred, weights = self.graph, set()
            for info in (*inferred.input, *inferred.value_info, *inferred.output):
                if info.name in weights:
                    continue
                if info.type.tensor_type.HasField("shape"):
                    self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                              for d in info.type.tensor_type.shape.dim]

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.constants[name]) if name in self.constants else None

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def add_constant(self, stem: str, array: np.ndarray) -> str:
        name, index = f"graph_opt/{stem}", 0
        while f"{name}_{index}" in self.constants or f"{name}_{index}" in self.producer:
            index += 1
        tensor = numpy_helper.from_array(array, f"{name}_{index}")
        self.graph.initializer.append(tensor)
        self.constants[tensor.name] = tensor
        return tensor.name

    def bypass(self, node: onnx.NodeProto, replacement: str) -> bool:
        """Consumers of node's output read `replacement` instead; the node is left for dead-node removal.
        False (nothing done) when the output is a graph output."""
        if node.output[0] in self.outputs:
            return False
        rename_uses(self.graph, node.output[0], replacement)
        return True


def rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                rename_uses(sub, old, new)


def used_names(graph: onnx.GraphProto) -> set[str]:
    used = {name for node in graph.node for name in node.input}
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                used |= used_names(sub)
    return used


def remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes none of whose outputs is used (by a node, a subgraph or as a graph output), and unused
    initializers. Returns the number of nodes removed."""
    return remove_dead(model.graph)


def remove_dead(graph: onnx.GraphProto) -> int:
    removed = 0
    while True:
        used = used_names(graph) | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
    used = used_names(graph) | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    return removed


def toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so that each comes after the producers of its inputs (outer-scope names count as available)."""
    produced = {o for n in graph.node for o in n.output}
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(not i or i in ready or i not in produced for i in n.input)]
        if not progress:
            return  # a cycle: leave the order alone, onnx.checker will say so
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if all(n is not m for m in progress)]
    del graph.node[:]
    graph.node.extend(ordered)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def folded(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of `name` when it is an initializer or computed by nodes that read only initializers (a bias split
    and squeezed before the loop), evaluated with onnx's reference evaluator; None otherwise."""
    constants = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    needed, pending = [], [name]
    while pending:
        value = pending.pop()
        if value in constants or any(value in n.output for n in needed):
            continue
        node = producers.get(value)
        if node is None or subgraphs(node) or node.op_type.startswith("Random"):
            return None
        needed.append(node)
        pending.extend(i for i in node.input if i)
    if not needed:
        return numpy_helper.to_array(constants[name]) if name in constants else None
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415 -- only constant folding needs it
    used = {i for n in needed for i in n.input}
    sub = helper.make_graph(list(reversed(needed)), "fold", [],
                            [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
                            [constants[i] for i in used if i in constants])
    return np.asarray(ReferenceEvaluator(helper.make_model(sub, opset_imports=[
        helper.make_opsetid("", 17)])).run(None, {})[0])


def reduction_axes(index: Graph, node: onnx.NodeProto) -> list[int] | None:
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and (constant := index.const(node.input[1])) is not None:
        axes = constant.tolist()
    return axes
